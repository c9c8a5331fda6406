"""Barlow Twins and VICReg as methods: their loss is the library loss of the two views' projections
(terms logged), the projector is 3 layers, and a smoke run's loss goes down."""

import pytest
import torch

import reprlearn
from fakedata import assert_loss_went_down
from reprlearn.api import build_method, resolve_config
from reprlearn.losses import barlow_twins_loss, vicreg_loss
from reprlearn.methods import DataInfo

INFO = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])


def _method(name, **options):
    cfg, mcfg = resolve_config(name, {"proj_hidden": 32, "proj_dim": 16, **options})
    return build_method(cfg, mcfg, INFO)


@pytest.mark.parametrize("name,options,loss", [
    ("barlow-twins", {"lambda_offdiag": 0.1}, lambda a, b: barlow_twins_loss(a, b, lambda_=0.1)),
    ("vicreg", {"sim_weight": 2.0, "var_weight": 3.0, "cov_weight": 0.5}, lambda a, b: vicreg_loss(a, b, 2.0, 3.0, 0.5)),
])
def test_method_loss_is_the_library_loss_of_the_projections(name, options, loss):
    method = _method(name, **options)
    images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    x_a, x_b = method.views(images, torch.Generator().manual_seed(0))
    terms = method.loss((x_a, x_b))
    want = loss(method.projector(method.encoder(x_a)), method.projector(method.encoder(x_b)))
    torch.testing.assert_close(terms["loss"], want)
    assert sum(isinstance(m, torch.nn.Linear) for m in method.projector.modules()) == 3
    if name == "vicreg":
        assert {"invariance", "variance", "covariance"} <= set(terms)


@pytest.mark.parametrize("name", ["barlow-twins", "vicreg"])
def test_smoke(tmp_path, name):
    run = reprlearn.train(name, out=tmp_path / "r", epochs=2, eval=False, progress=False, batch_size=128)
    assert_loss_went_down(run)

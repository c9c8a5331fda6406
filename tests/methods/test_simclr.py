"""SimCLR's --head option: the projector between backbone and loss is the paper's MLP, one
Linear, or nothing (the loss on the backbone features h themselves)."""

import pytest
import torch
from torch import nn

from reprlearn.api import build_method, resolve_config
from reprlearn.errors import ReprlearnError
from reprlearn.losses import nt_xent
from reprlearn.methods import DataInfo

INFO = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])


def simclr(**options):
    cfg, mcfg = resolve_config("simclr", {"proj_hidden": 32, "proj_dim": 16, **options})
    return build_method(cfg, mcfg, INFO)


def test_head_choices_build_the_projector_they_name():
    feat = simclr().encoder.feature_dim
    linears = lambda m: [l for l in m.projector.modules() if isinstance(l, nn.Linear)]  # noqa: E731
    assert [(l.in_features, l.out_features) for l in linears(simclr())] == [(feat, 32), (32, 16)]
    assert any(isinstance(l, nn.ReLU) for l in simclr().projector.modules())
    assert [(l.in_features, l.out_features) for l in linears(simclr(head="linear"))] == [(feat, 16)]
    assert not any(isinstance(l, (nn.ReLU, nn.BatchNorm1d)) for l in simclr(head="linear").projector.modules())
    none = simclr(head="none")
    assert sum(p.numel() for p in none.projector.parameters()) == 0


def test_no_head_puts_the_loss_on_the_backbone_features():
    torch.manual_seed(0)
    m = simclr(head="none").train()
    x_a, x_b = torch.rand(2, 12, 1, 8, 8).unbind(0)
    h_a, h_b = m.encoder(x_a), m.encoder(x_b)
    expected = nt_xent(h_a, h_b, temperature=m.config.temperature)
    torch.testing.assert_close(m.loss((x_a, x_b))["loss"], expected)


def test_unknown_head_is_one_line():
    with pytest.raises(ReprlearnError, match="head"):
        simclr(head="deep")

"""The generative evaluation: AUROC against scikit-learn, interpolation, figures and commands."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

import reprlearn
from reprlearn.api import reconstruct_images, sample_images
from reprlearn.errors import ReprlearnError
from reprlearn.evaluate.generative import auroc, slerp


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=2, max_size=60))
def test_auroc_matches_sklearn_including_ties(pairs):
    scores = np.array([s for s, _ in pairs], dtype=float)
    positive = np.array([p for _, p in pairs])
    if positive.all() or not positive.any():
        with pytest.raises(ValueError):
            auroc(scores, positive)
        return
    assert auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))


def test_slerp_keeps_ends_and_norm():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    path = slerp(a, b, torch.linspace(0, 1, 5))
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(path.norm(dim=1), torch.full((5,), 3.0))


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "run"
    return reprlearn.train("ae", out=out, epochs=3, batch_size=128, progress=False, exclude_class=3,
                           labels_per_class=2)


def test_autoencoder_eval_writes_figures_recon_and_anomaly_auroc(ae_run):
    import json

    result = json.loads((ae_run / "eval.json").read_text())
    for name in ("reconstructions.png", "interpolation.png", "umap.png"):
        assert (ae_run / name).stat().st_size > 1000
    assert 0 < result["recon_mse"] < 0.2
    assert result["anomaly_class"] == 3 and 0.0 <= result["anomaly_auroc"] <= 1.0
    assert result["trained_without_class"] == 3


def test_reconstruct_and_sample_commands(ae_run, tmp_path):
    path = reconstruct_images(ae_run, "digits:test", tmp_path / "r.png", n=8)
    assert path.stat().st_size > 1000
    with pytest.raises(ReprlearnError, match="cannot sample"):
        sample_images(ae_run, tmp_path / "s.png")
    with pytest.raises(ReprlearnError, match="does not reconstruct"):
        simclr = reprlearn.train("simclr", out=tmp_path / "s", epochs=1, batch_size=128, eval=False, progress=False)
        reconstruct_images(simclr, "digits:test", tmp_path / "x.png")


def test_exclude_class_must_exist(tmp_path):
    with pytest.raises(ReprlearnError, match="--exclude-class 42"):
        reprlearn.train("ae", out=tmp_path / "r", epochs=1, exclude_class=42, eval=False, progress=False)


def test_vae_eval_names_its_density(tmp_path):
    import json
    import math

    run = reprlearn.train("vae", out=tmp_path / "run", epochs=2, batch_size=128, progress=False, binarize="dynamic")
    result = json.loads((run / "eval.json").read_text())
    assert result["iwae_nats"] <= result["nelbo_nats"] + 0.5 and result["iwae_k"] == 50
    assert result["density"] == {"data": "binarized", "binarize": "dynamic", "likelihood": "bernoulli"}
    assert "bits_per_dim" not in result  # bits over 2 values are not 8-bit bits/dim
    assert 0 < result["bits_per_binary_dim"] == pytest.approx(result["iwae_nats"] / (64 * math.log(2)))


def test_density_of_8_bit_data_reports_bits_per_dim():
    import math

    from reprlearn.api import build_method, data_info, resolve_config
    from reprlearn.data.run_data import load_run_data
    from reprlearn.evaluate.generative import density

    cfg, method_cfg = resolve_config("vae", {})
    data = load_run_data(cfg, captions=False)
    train, test = data.train, data.eval
    torch.manual_seed(0)
    m = build_method(cfg, method_cfg, data_info(train)).eval()
    x = test.tensor()[:64].float() / 255
    result = density(m, x, None, k=5)
    assert result["density"] == {"data": "8-bit", "likelihood": "discretized-logistic"}
    assert "bits_per_binary_dim" not in result
    assert result["bits_per_dim"] == pytest.approx(result["iwae_nats"] / (64 * math.log(2)))

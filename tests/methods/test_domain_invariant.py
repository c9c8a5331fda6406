"""domain-invariant: the critic against closed forms, the joint critic's use of labels, the
references' shared start, the target labels it never sees, and learning on digits -> digits-m."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reprlearn.config import merge_config
from reprlearn.methods import METHODS
from reprlearn.methods.domain_invariant import (critic_optimizer, joint_inputs, lambda_factor, make_critic,
                                                pseudo_labels, train_critic)
from reprlearn.runs import build_method, data_info
from reprlearn.data import load_source

# ../shared/data/cifar10 above the checkout (digits-m blends onto its first training shard)
CIFAR = next((p / "shared" / "data" / "cifar10" for p in Path(__file__).resolve().parents
              if (p / "shared" / "data" / "cifar10" / "train-000000.tar.gz").is_file()), None)
needs_cifar = pytest.mark.skipif(CIFAR is None, reason="digits-m needs ../shared/data/cifar10")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit_critic(sample_s, sample_t, steps: int, gp_weight: float = 10.0, seed: int = 0, in_dim: int = 1):
    """Train a fresh critic (the method's) alone on fresh samples each step; its W1 on new samples."""
    torch.manual_seed(seed)
    critic = make_critic(in_dim, 64)
    opt = critic_optimizer(critic, 1e-3)
    for _ in range(steps):
        train_critic(critic, opt, sample_s(), sample_t(), torch.rand(1, 512, 1), gp_weight)
    with torch.no_grad():
        zs, zt = sample_s(4096), sample_t(4096)
        return float(critic(zs).mean() - critic(zt).mean())


@pytest.mark.parametrize("mu1,mu2,sigma", [(0.0, 1.5, 1.0), (1.0, -1.0, 0.5)])
def test_critic_estimates_w1_between_two_gaussians(mu1, mu2, sigma):
    """W1(N(μ1, σ²), N(μ2, σ²)) = |μ1 − μ2| (a translation): the critic trained alone gets within 10%."""
    g = torch.Generator().manual_seed(1)
    gauss = lambda mu: (lambda n=512: mu + sigma * torch.randn(n, 1, generator=g))  # noqa: E731
    estimate = fit_critic(gauss(mu1), gauss(mu2), steps=800)
    assert abs(abs(estimate) - abs(mu1 - mu2)) < 0.1 * abs(mu1 - mu2), estimate


def test_critic_without_penalty_is_not_lipschitz():
    """γ = 0 leaves D unconstrained: the estimate overshoots |μ1 − μ2| (the penalty is what makes it W1)."""
    g = torch.Generator().manual_seed(2)
    gauss = lambda mu: (lambda n=512: mu + torch.randn(n, 1, generator=g))  # noqa: E731
    assert fit_critic(gauss(0.0), gauss(1.5), steps=300, gp_weight=0.0) > 3.0


def clusters(n: int, g: torch.Generator):
    """Features from two clusters (±2 on one axis) and each point's cluster as its label."""
    y = torch.randint(0, 2, (n,), generator=g)
    h = torch.randn(n, 2, generator=g) * 0.3
    h[:, 0] += 4 * y - 2
    return h, y


def test_joint_critic_receives_the_label_information():
    """Both domains draw features from the same two clusters, so the marginal critic's W1 is ~0.
    The joint critic sees [h, y]: with the target's predictions right it is ~0 too; shuffling the
    target predictions (the same features, the labels permuted) moves the joint law and its estimate."""
    g = torch.Generator().manual_seed(3)

    def source(n=512):
        h, y = clusters(n, g)
        return joint_inputs(h, torch.zeros(n, 2), y, 1.0)  # true labels

    def target(shuffle: bool):
        def draw(n=512):
            h, y = clusters(n, g)
            if shuffle:
                y = y[torch.randperm(n, generator=g)]
            logits = 20.0 * torch.nn.functional.one_hot(y, 2).float()  # confident predictions
            return joint_inputs(h, logits, torch.full((n,), -1), 1.0)
        return draw

    right = fit_critic(source, target(False), steps=400, in_dim=4)
    shuffled = fit_critic(source, target(True), steps=400, in_dim=4)
    marginal = fit_critic(lambda n=512: source(n)[:, :2], lambda n=512: target(True)(n)[:, :2], steps=400, in_dim=2)
    assert abs(right) < 0.15 and abs(marginal) < 0.15, (right, marginal)
    assert shuffled > 0.5, shuffled


def test_joint_inputs_use_labels_where_known_and_predictions_elsewhere():
    h = torch.zeros(3, 2)
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    z = joint_inputs(h, logits, torch.tensor([1, -1, 0]), 0.5)
    p = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(z[:, 2:].numpy(), [[0, 0.5], [0.5 * p, 0.5 * (1 - p)], [0.5, 0]], rtol=1e-6)


def test_pseudo_labels_keep_only_confident_predictions():
    """softmax([ln 9, 0]) = (0.9, 0.1): at threshold 0.9 row 0 takes class 0, the uniform row stays
    unlabelled, a known label stays whatever the prediction; 0.91 drops row 0 as well."""
    logits = torch.tensor([[np.log(9.0), 0.0], [0.0, 0.0], [5.0, 0.0]])
    labels = torch.tensor([-1, -1, 1])
    assert pseudo_labels(logits, labels, 0.9 - 1e-6).tolist() == [0, -1, 1]
    assert pseudo_labels(logits, labels, 0.91).tolist() == [-1, -1, 1]


def test_lambda_schedules():
    """linear: step / warm-up, then 1; dann: 2 / (1 + exp(-10 p)) - 1 = tanh(5 p), checked against tanh."""
    assert lambda_factor("linear", 5, 10, 100) == pytest.approx(0.5)
    assert lambda_factor("linear", 50, 10, 100) == 1.0 and lambda_factor("linear", 0, 0, 100) == 1.0
    for step in (0, 10, 37, 50, 100, 150):
        assert lambda_factor("dann", step, 10, 100) == pytest.approx(np.tanh(5 * min(step, 100) / 100), abs=1e-12)


def build(**options):
    cfg, method_cfg = merge_config("domain-invariant", METHODS.get("domain-invariant").Config,
                                   [METHODS.get("domain-invariant").run_defaults, options])
    info = data_info(load_source("digits:test"))
    info.channels, info.mean, info.std = 3, info.mean * 3, info.std * 3
    return build_method(cfg, method_cfg, info)


def test_references_share_the_architecture_and_the_initialisation():
    method = build()
    refs = method.references()
    assert set(refs) == {"source_only", "lambda0", "target_oracle"}
    want_f, want_c = method.encoder.state_dict(), method.classifier.state_dict()
    for encoder, classifier in refs.values():
        assert repr(encoder) == repr(method.encoder) and repr(classifier) == repr(method.classifier)
        for want, got in ((want_f, encoder.state_dict()), (want_c, classifier.state_dict())):
            assert want.keys() == got.keys()
            assert all(torch.equal(want[k], got[k]) for k in want)
        # copies, not the same tensors: training one leaves the others where they were
        assert all(p.data_ptr() != q.data_ptr() for p, q in zip(encoder.parameters(), method.encoder.parameters()))


def test_a_checkpoint_without_the_critic_state_still_loads():
    """Runs saved before the critic's Adam state was checkpointed load (strictly), the critic's Adam fresh."""
    method = build()
    state = {k: v for k, v in method.state_dict().items() if not k.endswith("_extra_state")}
    other = build()
    other.load_state_dict(state)
    assert other.get_extra_state() == {"critic_opt": {}}
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    target = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    truth = torch.randint(0, 10, (40,), generator=g)
    return images, torch.randint(0, 10, (n,), generator=g), target, torch.full((40,), -1), truth


@pytest.mark.parametrize("align", ["marginal", "joint"])
def test_the_adapted_networks_never_see_target_labels(align):
    """Unsupervised adaptation: permuting the target's true labels (which only the oracle reads)
    leaves the gradients of F and C unchanged, and changes the oracle's."""
    method = build(align=align)
    images, labels, target, known, truth = batch()
    grads = []
    for t in (truth, truth[torch.randperm(len(truth), generator=torch.Generator().manual_seed(5))]):
        m = copy.deepcopy(method)
        v = m.views(images, torch.Generator().manual_seed(0), labels=labels, target=target, target_known=known,
                    target_truth=t)
        m.loss(v)["loss"].backward()
        grads.append({name: p.grad.clone() for name, p in m.named_parameters() if p.grad is not None})
    adapted = [k for k in grads[0] if k.startswith(("encoder.", "classifier."))]
    oracle = [k for k in grads[0] if k.startswith("refs.target_oracle.")]
    assert adapted and oracle
    assert all(torch.allclose(grads[0][k], grads[1][k]) for k in adapted)
    assert any(not torch.allclose(grads[0][k], grads[1][k]) for k in oracle)


def test_confident_joint_critic_sees_only_confident_target_rows():
    """--pseudo-threshold: the critic's target rows are the confident ones, with one-hot labels, and
    as many source rows."""
    method = build(align="joint", pseudo_threshold=0.9)
    hs, ht = torch.randn(6, method.encoder.feature_dim), torch.randn(5, method.encoder.feature_dim)
    logits_t = torch.zeros(5, 10)
    logits_t[[1, 3], [4, 7]] = 10.0  # rows 1 and 3 confident (p > 0.99), the rest uniform
    zs, zt, alpha = method.critic_batch(hs, ht, torch.zeros(6, 10), logits_t, torch.arange(6),
                                        torch.full((5,), -1), torch.rand(3, 6, 1))
    assert zs.shape[0] == zt.shape[0] == alpha.shape[1] == 2
    torch.testing.assert_close(zt[:, :-10], ht[[1, 3]])
    assert zt[0, -10:].argmax() == 4 and zt[1, -10:].argmax() == 7 and zt[:, -10:].sum().item() == 2.0


def test_critic_trains_only_on_its_own_objective():
    """The feature loss's gradient on the critic is dropped before the engine's optimiser step."""
    method = build()
    images, labels, target, known, truth = batch()
    v = method.views(images, torch.Generator().manual_seed(0), labels=labels, target=target, target_known=known,
                     target_truth=truth)
    method.loss(v)["loss"].backward()
    assert any(p.grad is not None for p in method.critic.parameters())
    method.before_optimizer_step(0, 10)
    assert all(p.grad is None for p in method.critic.parameters())


@needs_cifar
def test_digits_to_digits_m_beats_source_only(tmp_path, monkeypatch):
    """The learning check (short): the adapted target accuracy above the source-only reference's
    (trained beside it from the same start), and the domain classifier near 0.5 after training
    where it tells the domains apart before (benchmarks/domain_shift.py measures 3 seeds)."""
    import reprlearn
    from reprlearn.data.run_data import load_run_data
    from reprlearn.evaluate.domain import domain_metrics
    from reprlearn.runs import build_encoder, load_method

    monkeypatch.setenv("REPRLEARN_CIFAR10", str(CIFAR))
    run = reprlearn.train("domain-invariant", out=tmp_path / "run", progress=False, eval=False, epochs=SHORT_EPOCHS)
    method, cfg, info = load_method(run)
    data = load_run_data(cfg, captions=False)
    result = domain_metrics(method, build_encoder(cfg, info), data.eval, data.target_eval, "cpu")
    print({k: result[k] for k in ("target_top1", "source_only_top1", "lambda0_top1", "target_oracle_top1",
                                  "source_top1", "domain_classifier", "critic_w1")})
    assert result["target_top1"] > result["source_only_top1"] + 0.03
    dc = result["domain_classifier"]
    assert dc["before"] > 0.9 and dc["after"] < 0.75 and dc["after"] < dc["source_only"] - 0.15


@pytest.mark.slow
@needs_cifar
def test_a_run_writes_the_domain_keys_and_the_picture(tmp_path, monkeypatch):
    """`reprlearn train domain-invariant` evaluates itself: every domain key in eval.json, umap_domains.png."""
    import reprlearn

    monkeypatch.setenv("REPRLEARN_CIFAR10", str(CIFAR))
    run = reprlearn.train("domain-invariant", out=tmp_path / "run", progress=False, epochs=2)
    result = json.loads((run / "eval.json").read_text())
    for key in ("target_top1", "source_only_top1", "lambda0_top1", "target_oracle_top1", "source_top1",
                "critic_w1", "domain_classifier", "domain_top1", "worst_domain_top1"):
        assert key in result, key
    assert (run / "umap_domains.png").is_file()


SHORT_EPOCHS = 15


@needs_cifar
def test_resume_continues_the_critic_exactly(tmp_path, monkeypatch):
    """The critic's Adam lives outside the engine's optimiser; its moments travel in the checkpoint,
    so a run stopped after one epoch and resumed ends with the uninterrupted run's weights, the
    critic's included (exactly, as tests/test_engine.py asks of every run)."""
    import lightning as L

    import reprlearn

    class StopAfterOneEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    def final_state(run):
        return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)

    monkeypatch.setenv("REPRLEARN_CIFAR10", str(CIFAR))
    fast = dict(epochs=2, batch_size=256, checkpoint_every=1, eval=False, progress=False, references=False,
                critic_steps=2)
    full = final_state(reprlearn.train("domain-invariant", out=tmp_path / "full", **fast))
    part = reprlearn.train("domain-invariant", out=tmp_path / "part", callbacks=[StopAfterOneEpoch()], **fast)
    mid = final_state(part)
    assert mid["epoch"] == 0 and mid["state_dict"]["method._extra_state"]["critic_opt"]["state"]
    resumed = final_state(reprlearn.train("domain-invariant", out=tmp_path / "part", resume=True, **fast))
    assert full["global_step"] == resumed["global_step"] == 2 * (1438 // 256)
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    # the weights (the critic's first) before the optimiser state itself
    keys = sorted(full["state_dict"], key=lambda k: (not k.startswith("method.critic."), k.endswith("_extra_state")))
    for key in keys:
        torch.testing.assert_close(resumed["state_dict"][key], full["state_dict"][key], rtol=0, atol=0, msg=key)

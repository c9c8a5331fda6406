"""Methods in the user's own file: the example's loss by hand, and the whole life of a run
(train, --help, eval, interrupt + resume, reload, a moved or changed file) through the CLI
and the Python API."""

import importlib.util
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import reprlearn
from reprlearn.cli import main
from reprlearn.errors import ReprlearnError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "barlow_twins.py"
FAST = dict(epochs=2, batch_size=128, warmup_epochs=1, eval=False, progress=False, proj_hidden=64, proj_dim=32)


def example_module():
    spec = importlib.util.spec_from_file_location("barlow_twins_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_barlow_twins_loss_matches_a_naive_loop():
    loss_fn = example_module().barlow_twins_loss
    g = torch.Generator().manual_seed(0)
    for n, d, lam in ((16, 5, 0.02), (9, 3, 0.5), (32, 8, 0.0)):
        z_a, z_b = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g,
                                                                                  dtype=torch.float64)
        mean_a, mean_b = z_a.mean(0), z_b.mean(0)
        std_a = ((z_a - mean_a) ** 2).mean(0).sqrt()
        std_b = ((z_b - mean_b) ** 2).mean(0).sqrt()
        expected = 0.0
        for i in range(d):
            for j in range(d):
                c_ij = sum(((z_a[k, i] - mean_a[i]) / std_a[i]) * ((z_b[k, j] - mean_b[j]) / std_b[j])
                           for k in range(n)) / n
                expected += (1 - c_ij) ** 2 if i == j else lam * c_ij ** 2
        torch.testing.assert_close(loss_fn(z_a, z_b, lam), torch.as_tensor(float(expected), dtype=torch.float64))
        # identical standardised views: C = correlation matrix of z_a, diagonal exactly 1
        assert loss_fn(z_a, z_a, 0.0).abs() < 1e-9


def test_cli_help_lists_the_user_methods_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", f"{EXAMPLE}:BarlowTwins", "--help"])
    out = capsys.readouterr().out
    assert "--lambda-offdiag" in out and "barlowtwins options" in out


def test_user_method_trains_evaluates_and_reloads_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"{EXAMPLE}:BarlowTwins", "--out", str(run), "--epochs", "2", "--batch-size", "128",
                 "--no-progress", "--lambda-offdiag", "0.05", "--eval-max-train", "400"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == f"{EXAMPLE}:BarlowTwins"  # the file and the class, never the code
    assert saved["options"]["lambda_offdiag"] == 0.05
    assert "barlowtwins" in capsys.readouterr().out  # the evaluation table names the method
    assert main(["eval", str(run)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0].startswith(f"loading method BarlowTwins from {EXAMPLE}")
    assert "knn_top1" in captured.out and (run / "eval.json").is_file()
    # the checkpoint holds tensors only: loading stays weights_only
    torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def test_user_method_through_the_python_api_moved_and_changed_files(tmp_path):
    file = tmp_path / "mine" / "bt.py"
    file.parent.mkdir()
    shutil.copy(EXAMPLE, file)
    run = reprlearn.train(f"{file}:BarlowTwins", out=tmp_path / "run", **FAST)
    encoder = reprlearn.load(run)
    assert encoder(torch.rand(3, 1, 8, 8)).shape == (3, encoder.feature_dim)
    weights = {k: v.clone() for k, v in encoder.state_dict().items()}

    moved = tmp_path / "elsewhere.py"
    file.rename(moved)
    with pytest.raises(ReprlearnError, match="does not exist; pass --method-file") as e:
        reprlearn.load(run)
    assert "\n" not in str(e.value)
    again = reprlearn.load(run, method_file=moved)
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, weights[k])

    changed = tmp_path / "changed.py"
    changed.write_text(moved.read_text().replace("lambda_offdiag: float", "redundancy_weight: float")
                       .replace("self.config.lambda_offdiag", "self.config.redundancy_weight"))
    with pytest.raises(ReprlearnError, match="no longer matches the config this run was saved with"):
        reprlearn.load(run, method_file=changed)
    with pytest.raises(ReprlearnError, match="defines no class 'BarlowTwins'"):
        changed.write_text("x = 1\n")
        reprlearn.load(run, method_file=changed)


def test_a_method_class_passed_in_python_is_recorded_by_its_file(tmp_path):
    module = example_module()
    run = reprlearn.train(module.BarlowTwins, out=tmp_path / "run", **FAST)
    assert yaml.safe_load((run / "config.yaml").read_text())["method"] == f"{EXAMPLE}:BarlowTwins"
    assert reprlearn.load(run).feature_dim > 0


@pytest.mark.parametrize("source, words", [
    ("class NotAMethod:\n    pass\n", "is not a subclass of reprlearn.methods.Method"),
    ("from reprlearn.methods import Method\nclass NotAMethod(Method):\n    pass\n", "has no Config dataclass"),
    ("raise ImportError('missing dependency foo')\n", "importing"),
])
def test_broken_user_files_are_refused_in_one_line(tmp_path, source, words):
    file = tmp_path / "bad.py"
    file.write_text(source)
    with pytest.raises(ReprlearnError, match=words) as e:
        reprlearn.train(f"{file}:NotAMethod", out=tmp_path / "run", **FAST)
    assert "\n" not in str(e.value)


def test_user_method_resumes_after_an_interrupt(tmp_path):
    run = tmp_path / "run"
    args = ["train", f"{EXAMPLE}:BarlowTwins", "--out", str(run), "--epochs", "200", "--batch-size", "32",
            "--no-eval", "--no-progress", "--checkpoint-steps", "5", "--proj-hidden", "64", "--proj-dim", "32"]
    proc = subprocess.Popen([sys.executable, "-m", "reprlearn.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (run / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with" in err
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step < 1438 // 32  # stopped within the first epoch
    # resume, finishing after two epochs instead of the 200 asked at first
    assert main(["train", f"{EXAMPLE}:BarlowTwins", "--out", str(run), "--resume", "--epochs", "2",
                 "--no-eval", "--no-progress"]) == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * (1438 // 32)

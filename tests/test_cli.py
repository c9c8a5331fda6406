"""The command line as people use it: fast help, no abbreviations, "did you mean", YAML keys
checked, help placeholders, resume messages, and the Python API as quiet as the CLI."""

import ast
import contextlib
import csv
import dataclasses
import inspect
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reprlearn.cli import main
from reprlearn.config import RunConfig, describe_fields, option
from reprlearn.methods import METHODS
from reprlearn.registry import read_catalog

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--data", "digits", "--batch-size", "256", "--warmup-epochs", "0", "--checkpoint-every", "1",
        "--no-eval", "--no-progress", "--logger", "csv"]


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse exits for --help and its own errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def one_error_line(argv) -> str:
    code, _, err = run_cli(*argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **env})


# ---------------------------------------------------------------- listing without torch


def test_help_version_and_methods_import_neither_torch_nor_lightning():
    done = python("import contextlib, io, sys\n"
                  "from reprlearn.cli import main\n"
                  "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
                  "    assert main(['--help']) == main(['--version']) == main(['methods']) == 0\n"
                  "loaded = [m for m in ('torch', 'lightning') if m in sys.modules]\n"
                  "print(loaded, 'simclr' in out.getvalue(), 'reprlearn 0.1.0' in out.getvalue())\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "True", "True"], done.stdout


def test_the_public_api_is_still_there_when_first_used():
    done = python("import sys, reprlearn\n"
                  "assert 'torch' not in sys.modules\n"
                  "from reprlearn import load\n"
                  "print(reprlearn.train is reprlearn.api.train, load is reprlearn.api.load, 'torch' in sys.modules)\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]


def test_the_catalog_is_the_registry():
    catalog = read_catalog("reprlearn.methods")
    assert sorted(catalog) == METHODS.names()
    for name, (module, description) in catalog.items():
        cls = METHODS.get(name)
        assert cls.__module__ == f"reprlearn.methods.{module}", name
        # the description read from the source is the docstring Python itself sees, first paragraph
        doc = inspect.getdoc(sys.modules[cls.__module__])
        assert description == " ".join(doc.split("\n\n")[0].split()) and description, name


def test_every_registering_file_is_in_the_catalog():
    """A method file that registers a name but is missing from CATALOG would never be imported."""
    registered = {}
    for file in (Path(SRC) / "reprlearn" / "methods").glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "register" \
                    and getattr(node.func.value, "id", None) == "METHODS":
                registered[node.args[0].value] = file.stem
    assert registered == {name: module for name, (module, _) in read_catalog("reprlearn.methods").items()}


def test_methods_lists_each_method_with_its_description():
    code, out, _ = run_cli("methods")
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert code == 0 and sorted(rows) == METHODS.names()
    assert rows["simclr"].startswith("SimCLR (Chen et al. 2020)")


# ---------------------------------------------------------------- abbreviations and "did you mean"


@pytest.mark.parametrize("argv,expected", [
    (("train", "--epoch", "3"), "unknown option --epoch; did you mean --epochs?"),
    (("train", "simclr", "--epoch=3"), "unknown option --epoch; did you mean --epochs?"),
    (("train", "simclr", "--temp", "0.3"), "unknown option --temp"),  # not taken for --temperature
    (("export", "RUN", "--form", "onnx", "--out", "x.onnx"), "unknown option --form; did you mean --format?"),
    (("curate", "score", "POOL", "--mod", "RUN", "--out", "D"), "unknown option --mod; did you mean --model?"),
    (("eval", "RUN", "--knn", "5"), "unknown option --knn; did you mean --knn-k?"),
])
def test_abbreviations_are_refused_with_the_option_meant(argv, expected):
    assert expected in one_error_line(argv)


@pytest.mark.parametrize("argv,expected", [
    (("trian",), "unknown command 'trian'; did you mean train?"),
    (("train", "simclf"), "unknown method 'simclf'; did you mean simclr?"),
    (("train", "simclr", "--temprature", "0.3"), "unknown option --temprature; did you mean --temperature"),
    (("curate", "scor"), "invalid choice 'scor'; did you mean score?"),
    (("export", "RUN", "--format", "onx", "--out", "x"), "invalid choice 'onx'; did you mean onnx?"),
])
def test_misspellings_get_the_closest_names(argv, expected):
    assert expected in one_error_line(argv)


def test_a_name_far_from_every_other_gets_the_list_only():
    line = one_error_line(("train", "zzzz"))
    assert "did you mean" not in line and "choose one of: ae, " in line


def test_the_api_suggests_too():
    import reprlearn
    from reprlearn.errors import ReprlearnError

    with pytest.raises(ReprlearnError, match="unknown method 'simclf'; did you mean simclr?"):
        reprlearn.train("simclf")


# ---------------------------------------------------------------- YAML keys


def test_a_yaml_key_no_option_has_lists_every_valid_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text("epoch: 3\nbatch_size: 64\n")
    line = one_error_line(("train", "simclr", "--config", str(config)))
    assert f"unknown option 'epoch' in config file {config}; did you mean epochs?" in line
    listed = set(re.findall(r"[a-z][a-z0-9_]*", line.split("Valid keys:")[1]))
    run_keys = {f.name for f in dataclasses.fields(RunConfig)} - {"options"}
    method_keys = {f.name for f in dataclasses.fields(METHODS.get("simclr").Config)}
    assert run_keys | method_keys <= listed
    assert not (tmp_path / "runs").exists()  # refused before a run folder is made


def test_a_method_key_under_options_is_checked_against_the_method(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("options:\n  temprature: 0.3\n")
    line = one_error_line(("train", "simclr", "--config", str(config)))
    assert "unknown option 'temprature'" in line and "under 'options'" in line and "did you mean temperature?" in line


# ---------------------------------------------------------------- help


def option_blocks(help_text: str) -> dict[str, str]:
    """--flag -> its help line(s) joined, from argparse's --help output."""
    blocks, current = {}, None
    for line in help_text.splitlines():
        match = re.match(r"  (--[a-z0-9-]+)(.*)", line)
        if match:
            current = match.group(1)
            blocks[current] = match.group(2)
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


def test_a_default_the_help_already_explains_is_not_said_again():
    @dataclasses.dataclass
    class Built:
        size: int = option(8, "patch side (default 8, or 16 above 64 px)", min=1)
        depth: int = option(4, "layers", min=1)
        scale: float | None = option(None, "a scale, off unless given", above=0.0)

    size, depth, scale = (f.help for f in describe_fields(Built))
    assert size == "patch side (default 8, or 16 above 64 px); an integer >= 1"
    assert depth == "layers; an integer >= 1 (default: 4)"
    assert scale == "a scale, off unless given; a number > 0.0 (or none)"


@pytest.mark.parametrize("method", METHODS.names())
def test_help_names_each_value_and_says_each_default_once(method):
    code, out, _ = run_cli("train", method, "--help")
    assert code == 0
    blocks = option_blocks(out)
    assert len(blocks) > 40, out
    for flag, text in blocks.items():
        assert not re.match(r"\s*X\b", text), f"{flag}: {text}"
        assert text.count("(default") <= 1, f"{flag}: {text}"


def test_help_placeholders_follow_the_value_type():
    _, out, _ = run_cli("train", "simclr", "--help")
    blocks = option_blocks(out)
    expected = {"--epochs": "N", "--lr": "FLOAT", "--data": "SOURCE", "--init-from": "PATH", "--out": "RUN_DIR",
                "--optimizer": "{adamw,sgd,lars}", "--temperature": "FLOAT", "--loss": "{nt_xent,margin,triplet}"}
    for flag, placeholder in expected.items():
        assert blocks[flag].split()[0] == placeholder, blocks[flag]
    assert blocks["--epochs"].count("150") == 1 and "(default: None)" not in out


@pytest.mark.parametrize("argv,expected", [
    (("eval", "--help"), ["--knn-k N", "--knn-temperature FLOAT", "--data SOURCE", "RUN_DIR"]),
    (("shards", "--help"), ["--image-size N", "--format {jpg,png}", "SOURCE"]),
    (("curate", "score", "--help"), ["--batch-size N", "--model RUN_DIR"]),
])
def test_the_other_commands_name_their_values_too(argv, expected):
    code, out, _ = run_cli(*argv)
    assert code == 0 and all(text in out for text in expected), out
    assert not re.search(r"--[a-z-]+ [A-Z]+_[A-Z_]+", out.replace("RUN_DIR", "")), out  # argparse's KNN_K


# ---------------------------------------------------------------- resume


def test_a_resumed_run_says_where_and_keeps_one_log_folder(tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "simclr", "--out", str(run), "--epochs", "1", *TINY)[0] == 0
    code, out, err = run_cli("train", "--out", str(run), "--resume", "--epochs", "3", *TINY)
    assert code == 0, err
    per_epoch = 1438 // 256  # digits' training split, whole batches of 256
    assert f"resuming from epoch 2, step {per_epoch} of {3 * per_epoch}; {2 * per_epoch} steps (2.0 epochs) left" in out
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["checkpoints", "logs"]
    with open(run / "logs" / "metrics.csv", newline="") as f:
        epochs = sorted({int(float(row["epoch"])) for row in csv.DictReader(f) if row.get("epoch")})
    assert epochs == [0, 1, 2]  # the first run's rows kept beside the resumed run's


@pytest.mark.parametrize("given", [("--resume",), ("--config", "{run}/config.yaml")])
def test_without_a_method_the_resumed_run_or_config_file_names_it(tmp_path, given):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: mae\nepochs: 0\n")  # refused after parsing, before training
    given = [g.format(run=run) for g in given]
    line = one_error_line(("train", "--out", str(run), *given, "--mask-ratio", "0.6"))
    assert "bad value 0 for option 'epochs'" in line  # --mask-ratio, mae's, was accepted


# ---------------------------------------------------------------- quiet API


def test_the_python_api_prints_no_lightning_banners(tmp_path):
    done = python("import reprlearn\n"
                  f"reprlearn.train('simclr', epochs=1, eval=False, out={str(tmp_path / 'run')!r}, batch_size=256,\n"
                  "                progress=False, logger='csv')\n")
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "training simclr on digits" in said
    for banner in ("GPU available", "TPU available", "💡", "LitLogger", "litlogger", "LeafSpec"):
        assert banner not in said, said


def test_reprlearn_methods_stays_the_api_function_after_the_subpackage_is_imported():
    """The subpackage ``reprlearn.methods`` shares the API function's name: importing it (as the API
    itself does) must not replace ``reprlearn.methods()``."""
    code = ("import reprlearn; reprlearn.train; import reprlearn.methods; from reprlearn.methods import METHODS; "
            "assert reprlearn.methods() == METHODS.names(), reprlearn.methods")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]


def test_the_python_api_trains_the_method_a_config_file_names(tmp_path):
    """``reprlearn.train(config=FILE)`` with no method trains the file's ``method:`` (as the CLI does),
    and resuming without a method continues the run's own method."""
    import reprlearn
    from reprlearn.config import load_yaml

    config = tmp_path / "c.yaml"
    config.write_text("method: byol\nepochs: 1\nbatch_size: 128\nmax_steps: 2\n")
    run = reprlearn.train(config=str(config), out=tmp_path / "run", eval=False, progress=False)
    assert load_yaml(run / "config.yaml")["method"] == "byol"
    reprlearn.train(out=run, resume=True, max_steps=3, eval=False, progress=False)
    assert load_yaml(run / "config.yaml")["method"] == "byol"

"""The documentation works: the site builds, its Python examples run, its commands name real options.

- the MkDocs site builds with ``--strict`` (a broken link, a missing page or a docstring the API
  reference cannot render fails it);
- every fenced ``python`` block of README.md and docs/ runs on small data in a fresh folder (holding a
  copy of examples/*.py), unless
  its first line is a tag ``# docs: gpu`` (needs a GPU), ``# docs: long`` (minutes of CPU) or
  ``# docs: skip`` (needs files or libraries a test machine does not have);
- every ``reprlearn ...`` line of a fenced ``bash`` block is parsed by the CLI's own parsers (for
  ``train METHOD``, the parser with that method's options), so a page cannot name an option the CLI
  does not have;
- the repository speaks of the project only (no words about how it was built).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from reprlearn.errors import ReprlearnError

ROOT = Path(__file__).resolve().parent.parent
SKIP_TAGS = ("gpu", "long", "skip")
SHELL_SEPARATORS = {"|", "||", "&&", ";", "&"}


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def fenced_blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(first line number, body) of every block fenced with ```language (at any indentation)."""
    blocks, body, start, inside = [], [], 0, False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not inside and stripped.startswith("```") and stripped[3:].strip().split(" ")[0] == language:
            inside, body, start, indent = True, [], number + 1, len(line) - len(line.lstrip())
        elif inside and stripped.startswith("```"):
            inside = False
            blocks.append((start, "\n".join(body)))
        elif inside:
            body.append(line[indent:] if line[:indent].strip() == "" else line)
    return blocks


def skip_tag(code: str) -> str | None:
    """The tag of a block whose first line is ``# docs: TAG``, else None."""
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    match = re.fullmatch(r"#\s*docs:\s*(\w+).*", first.strip())
    return match.group(1) if match else None


# ---------------------------------------------------------------------------------------------- site


def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[dev]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[dev]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count('id="reprlearn.api.train"') == 1


def test_every_nav_page_exists():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    listed = list(pages(config["nav"]))
    assert listed and all((ROOT / "docs" / page).is_file() for page in listed), listed


# ------------------------------------------------------------------------------------ python examples


def _python_blocks():
    for path in _doc_files():
        for line, code in fenced_blocks(path.read_text(), "python"):
            name = f"{path.relative_to(ROOT)}:{line}"
            tag = skip_tag(code)
            marks = [pytest.mark.skip(reason=f"tagged '# docs: {tag}'")] if tag in SKIP_TAGS else []
            yield pytest.param(code, id=name, marks=marks)


@pytest.mark.parametrize("code", list(_python_blocks()))
def test_python_example_runs(code, tmp_path):
    for example in (ROOT / "examples").glob("*.py"):  # pages import them as from the examples/ folder
        shutil.copy(example, tmp_path / example.name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"example failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"


def test_skip_tag_is_read_from_the_first_line():
    assert skip_tag("# docs: gpu\nimport reprlearn") == "gpu"
    assert skip_tag("\n#docs: long (CIFAR-10)\nx = 1") == "long"
    assert skip_tag("import reprlearn\n# docs: gpu") is None


# ------------------------------------------------------------------------------------ command lines


def command_lines(script: str) -> list[list[str]]:
    """The argument lists after ``reprlearn`` in a bash block: continuations joined, comments dropped,
    ``$(which reprlearn)`` read as ``reprlearn``, placeholders (``$DATA``) kept as plain words, and a
    synopsis line (``[--k 8]``, ``[--max-steps N | --samples-seen N]``) read with its options present."""
    script = script.replace("\\\n", " ").replace("$(which reprlearn)", "reprlearn")
    commands = []
    for line in script.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote in prose-like lines: not a command we can check
            words = line.split("#")[0].split()
        if any(w.startswith("[-") for w in words):  # a synopsis: optional parts in brackets, alternatives
            words = [w for w in (w.strip("[]") for w in words) if w not in ("|", "...", "")]
        for i, word in enumerate(words):
            if word == "reprlearn" and (i == 0 or words[i - 1] in SHELL_SEPARATORS or words[i - 1] in
                                        ("time", "srun", "exec") or re.fullmatch(r"\w+=\S*", words[i - 1])
                                        or words[i - 1].startswith("-") or words[i - 1].isdigit()):
                rest = words[i + 1:]
                end = next((j for j, w in enumerate(rest) if w in SHELL_SEPARATORS or w.startswith(">")), len(rest))
                commands.append([w if not w.startswith("$") else "PLACEHOLDER" for w in rest[:end]])
    return commands


class _Parsed(Exception):
    """Raised instead of running a command once its arguments have parsed."""


PLACEHOLDER_VALUE = re.compile(r"[A-Z][A-Z0-9_]*|PLACEHOLDER|.*\|.*")  # N, RUN_DIR, $DATA, adamw|sgd
# argparse's own message, and the CLI's (with a suggestion, then "Choose one of: a, b")
BAD_VALUE = re.compile(r"argument (--[\w-]+): invalid (?:(int|float) value|choice):? '([^']*)'"
                       r"(?:.*?(?:\(choose from '|[Cc]hoose one of: )([^',;()]*))?")


def check_command(argv: list[str]) -> str | None:
    """None when the CLI's own parser accepts ``reprlearn ARGV``, else its one-line error. Options are
    checked by name: a placeholder value (``--epochs N``, ``--format jpg|png``) stands for a valid one."""
    argv = list(argv)
    for _ in range(len(argv) + 1):
        error = _parse_error(argv)
        bad = BAD_VALUE.search(error or "")
        if not bad or not PLACEHOLDER_VALUE.fullmatch(bad.group(3)):
            return error
        option, kind, value, first_choice = bad.groups()
        i = next(i for i in range(1, len(argv)) if argv[i - 1] == option and argv[i] == value)
        argv[i] = {"int": "1", "float": "1.0"}.get(kind, first_choice)
    return error


def _parse_error(argv: list[str]) -> str | None:
    from reprlearn import cli

    if not argv or argv[0] in ("--version", "-V", "-h", "--help"):
        return None
    if argv[0] not in cli.COMMANDS:
        return f"unknown command {argv[0]!r}"
    if argv[0] == "methods":
        return None if len(argv) == 1 else f"reprlearn methods takes no arguments: {argv[1:]}"
    if argv[0] == "train" and len(argv) > 1 and argv[1] == "METHOD":  # the synopsis: any method's parser
        argv = ["train", "simclr", *argv[2:]]
    def stopping(real_parse):
        def parse_then_stop(parser, args=None, namespace=None):  # every parser stops once it has parsed
            real_parse(parser, args, namespace)
            raise _Parsed
        return parse_then_stop

    err, out = io.StringIO(), io.StringIO()
    try:  # the CLI's own parser class checks names before argparse does: both stop after parsing
        with mock.patch.object(argparse.ArgumentParser, "parse_args", stopping(argparse.ArgumentParser.parse_args)), \
                mock.patch.object(cli._Parser, "parse_args", stopping(cli._Parser.parse_args)), \
                contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            cli.COMMANDS[argv[0]](argv[1:])
    except _Parsed:
        return None
    except ReprlearnError as e:  # the CLI's own checks before parsing (an unknown method)
        return str(e)
    except SystemExit as stop:  # argparse: 0 after --help, 2 after an error
        return None if stop.code in (0, None) else (err.getvalue().strip() or f"exit {stop.code}")
    return "the command ran without parsing its arguments"


def _documented_commands():
    for path in _doc_files():
        for line, script in fenced_blocks(path.read_text(), "bash"):
            for argv in command_lines(script):
                yield f"{path.relative_to(ROOT)}:{line}", argv


def test_every_documented_command_parses(monkeypatch):
    monkeypatch.chdir(ROOT)  # examples/… method files are named relative to the repository root
    commands = list(_documented_commands())
    assert len(commands) > 50, "the checker found too few commands: is the block parser broken?"
    bad = [f"{where}: reprlearn {shlex.join(argv)}\n    {error}" for where, argv in commands
           if (error := check_command(argv))]
    assert not bad, "documented commands the CLI rejects:\n" + "\n".join(bad)


def test_checker_catches_an_option_the_cli_does_not_have(monkeypatch):
    monkeypatch.chdir(ROOT)
    (argv,) = command_lines("reprlearn train simclr --epochs 1 --no-such-option 3   # a made-up flag")
    error = check_command(argv)
    assert error is not None and "--no-such-option" in error
    (argv,) = command_lines("OMP_NUM_THREADS=1 reprlearn embed runs/x --data digits:test --out f.npy --no-such-option")
    assert "--no-such-option" in check_command(argv)
    # a method's own option is accepted for that method only
    assert check_command(["train", "simclr", "--temperature", "0.2"]) is None
    assert check_command(["train", "byol", "--temperature", "0.2"]) is not None
    assert "unknown method" in check_command(["train", "simclf", "--epochs", "1"])
    # placeholders, continuations and a wrapped launcher are read as the shell would
    (argv,) = command_lines("torchrun --nproc-per-node 8 $(which reprlearn) train simclr \\\n"
                            "    --data $DATA --devices 8")
    assert argv == ["train", "simclr", "--data", "PLACEHOLDER", "--devices", "8"] and check_command(argv) is None
    assert check_command(["curate", "filter", "s/", "--keep", "none", "--out", "k.parquet", "--bogus"]) is not None
    # a placeholder value stands for a valid one; a real value is checked as the CLI checks it
    assert check_command(["eval", "RUN_DIR", "--labels-per-class", "N", "--knn-temperature", "T"]) is None
    assert check_command(["export", "RUN_DIR", "--format", "safetensors|onnx", "--out", "PATH"]) is None
    assert "invalid int value" in check_command(["eval", "RUN_DIR", "--labels-per-class", "five"])
    assert "invalid choice" in check_command(["export", "RUN_DIR", "--format", "pickle", "--out", "PATH"])
    (argv,) = command_lines("reprlearn sample RUN [--n 64] [--class C] [--no-such-option N] --out F.png")
    assert "--no-such-option" in check_command(argv)


# ------------------------------------------------------------------------------------ own words only

# the words in brackets keep this line itself out of a plain grep for them
SELF_REFERENCE = re.compile(r"\bstop [0-9]|\bsessio[n]|issu[e] [0-9]|\blent\b|lectur[e]", re.IGNORECASE)
TEXT_SUFFIXES = {".md", ".py", ".sh", ".yml", ".yaml", ".txt", ".toml", ".cfg", ".json", ".csv"}


def test_the_project_speaks_of_itself_only():
    files = [ROOT / "README.md"] + [p for d in ("docs", "src", "benchmarks", "tests") for p in (ROOT / d).rglob("*")
                                     if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    this_file = Path(__file__).resolve()
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if path.resolve() == this_file and line.startswith("SELF_REFERENCE = "):
                continue
            if SELF_REFERENCE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not hits, "words about how the project was built, not about the project:\n" + "\n".join(hits)


def test_the_api_reference_lists_every_public_function():
    """Each public function of reprlearn.api (a top-level def without a leading underscore) is a member of
    the generated API page, so a new function cannot go undocumented."""
    import ast

    tree = ast.parse((ROOT / "src" / "reprlearn" / "api.py").read_text())
    public = {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}
    page = (ROOT / "docs" / "api.md").read_text()
    listed = set(re.findall(r"^\s+- (\w+)$", page.split("::: reprlearn.api", 1)[1].split(":::", 1)[0], re.M))
    assert public and public <= listed, f"public API functions missing from docs/api.md: {sorted(public - listed)}"

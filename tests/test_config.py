"""Configs and CLI arguments, property-based: every invalid value is a one-line error naming the
option and what it accepts; every valid value round-trips through the saved YAML."""

import contextlib
import dataclasses
import io
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reprlearn.cli import main
from reprlearn.config import RunConfig, _unwrap, build, load_yaml, save_yaml
from reprlearn.errors import ReprlearnError
from reprlearn.methods import METHODS

CLASSES = [RunConfig] + [METHODS.get(m).Config for m in METHODS.names()]
FIELDS = [(cls, f, typing.get_type_hints(cls)[f.name]) for cls in CLASSES for f in dataclasses.fields(cls)
          if f.metadata.get("help")]
IDS = [f"{cls.__name__}.{f.name}" for cls, f, _ in FIELDS]
TRUE_FALSE = {"true", "yes", "1", "on", "false", "no", "0", "off"}


def invalid_values(f: dataclasses.Field, typ) -> st.SearchStrategy:
    base, optional = _unwrap(typ)
    m = f.metadata
    words = st.text(min_size=1, max_size=8).filter(lambda s: s.strip().lower() not in {"none", "null", "~", ""})
    if m.get("choices"):
        return words.filter(lambda s: s not in m["choices"])
    if base is bool:
        return words.filter(lambda s: s.strip().lower() not in TRUE_FALSE)
    if base in (int, float):
        def not_a_number(s):
            try:
                float(s)
                return False
            except ValueError:
                return True

        options = [words.filter(not_a_number)]
        lo = m.get("min") if m.get("min") is not None else m.get("above")
        if lo is not None:
            below = st.integers(max_value=int(lo) - 1) if m.get("min") is not None else st.integers(max_value=int(lo))
            options.append(below if base is int else st.floats(max_value=lo, exclude_max=m.get("min") is not None,
                                                               allow_nan=False, allow_infinity=False))
        if m.get("max") is not None:
            hi = m["max"]
            options.append(st.integers(min_value=int(hi) + 1) if base is int else
                           st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False))
        if base is int:
            options.append(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()))
        return st.one_of(options)
    if m.get("numbers_as_text"):  # a duration: text or a bare number of seconds; invalid when not positive
        return st.one_of(st.integers(max_value=0), st.sampled_from(["soon", "-5m", "10x", "m", "0s"]))
    return st.integers()  # strings: a non-string is invalid


def valid_values(f: dataclasses.Field, typ) -> st.SearchStrategy:
    base, optional = _unwrap(typ)
    m = f.metadata
    if m.get("choices"):
        values = st.sampled_from(m["choices"])
    elif base is bool:
        values = st.booleans()
    elif base is int:
        lo = m.get("min") if m.get("min") is not None else (m["above"] + 1 if m.get("above") is not None else -10**6)
        values = st.integers(min_value=int(lo), max_value=int(m["max"]) if m.get("max") is not None else 10**6)
    elif base is float:
        lo = m.get("min") if m.get("min") is not None else m.get("above")
        values = st.floats(min_value=lo if lo is not None else -1e6, max_value=m.get("max") or 1e6,
                           exclude_min=m.get("above") is not None, allow_nan=False, allow_infinity=False)
    else:
        values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                         max_size=12).filter(lambda s: s.strip().lower() not in {"none", "null"})
    return st.one_of(values, st.none()) if optional else values


@pytest.mark.parametrize("cls,f,typ", FIELDS, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_invalid_value_is_one_line_error_naming_option(cls, f, typ, data):
    value = data.draw(invalid_values(f, typ))
    with pytest.raises(ReprlearnError) as e:
        build(cls, {f.name: value})
    message = str(e.value)
    assert "\n" not in message
    assert f"'{f.name.replace('_', '-')}'" in message and "expected" in message


@pytest.mark.parametrize("cls,f,typ", FIELDS, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_valid_value_round_trips_through_yaml(cls, f, typ, data, tmp_path_factory):
    value = data.draw(valid_values(f, typ))
    try:
        obj = build(cls, {f.name: value})
    except ReprlearnError as e:  # cross-field checks may refuse a combination; they still explain it
        assert "\n" not in str(e)
        return
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    save_yaml(path, dataclasses.asdict(obj))
    again = build(cls, load_yaml(path))
    assert again == obj


@settings(max_examples=40, deadline=None)
@given(name=st.from_regex(r"[a-z][a-z_]{2,15}", fullmatch=True))
def test_unknown_option_names_itself(name):
    if name in {f.name for f in dataclasses.fields(RunConfig)}:
        return
    with pytest.raises(ReprlearnError, match=f"unknown option '{name}'"):
        build(RunConfig, {name: 1})


def run_cli(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse exits for its own errors
            code = e.code
    return code, err.getvalue()


CLI_FIELDS = [(f.name.replace("_", "-"), f, typ) for cls, f, typ in FIELDS
              if cls in (RunConfig, METHODS.get("simclr").Config) and _unwrap(typ)[0] is not bool
              and (_unwrap(typ)[0] is not str or f.metadata.get("choices"))]  # free text is checked where used


@pytest.mark.parametrize("flag,f,typ", CLI_FIELDS, ids=[c[0] for c in CLI_FIELDS])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_cli_bad_value_is_one_line_without_traceback(flag, f, typ, data):
    value = data.draw(invalid_values(f, typ).map(str).filter(lambda s: not s.startswith("-") and "\x00" not in s))
    code, err = run_cli("train", "simclr", f"--{flag}", value, "--epochs", "1", "--no-eval")
    if flag == "epochs":
        code, err = run_cli("train", "simclr", f"--{flag}", value, "--no-eval")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert flag in lines[0] or f.name in lines[0], lines[0]


def test_cli_unknown_flag_method_and_command():
    for argv, word in [(("train", "simclr", "--tempreature", "0.1"), "--tempreature"),
                       (("train", "nosuch"), "unknown method 'nosuch'"),
                       (("frobnicate",), "unknown command"),
                       (("eval", "/nonexistent/run"), "no checkpoint"),
                       (("train", "simclr", "--data", "/nonexistent/x.tar", "--no-eval"), "does not exist")]:
        code, err = run_cli(*argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and word in lines[0], err


def test_method_options_do_not_shadow_run_options():
    run = {f.name for f in dataclasses.fields(RunConfig)}
    for name in METHODS.names():
        clash = run & {f.name for f in dataclasses.fields(METHODS.get(name).Config)}
        assert not clash, f"{name} options {clash} shadow run options of the same name"


def test_a_refused_option_leaves_no_run_folder(tmp_path, monkeypatch):
    import reprlearn
    from reprlearn.errors import ReprlearnError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReprlearnError, match="unknown method 'nosuch'"):
        reprlearn.train("nosuch", epochs=1)
    with pytest.raises(ReprlearnError, match="unknown option 'temprature'"):
        reprlearn.train("simclr", temprature=0.2)
    assert not (tmp_path / "runs").exists()

"""Find a method's class by name: a registered one, or a user's own ``FILE.py:ClassName``.

A method defined outside the package is a first-class citizen: ``reprlearn train
my_method.py:MyMethod`` imports the file, checks that the class keeps the method
contract (a :class:`Method` subclass with a ``Config`` dataclass and a ``loss``), and
trains it like any registered method. The run records the file's absolute path and
the class name in its config (``method: /abs/my_method.py:MyMethod``); a checkpoint
never carries code, so loading the run imports that file again (or the one given
with ``--method-file``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path

from ..errors import fail
from .base import METHODS, Method

# one module object per file version, so a class stays the same class while its file is unchanged
_LOADED: dict[tuple[Path, int, int], object] = {}


def is_user_method(name: str) -> bool:
    """True for a ``FILE.py:ClassName`` spec (a method in the user's own file)."""
    file, sep, cls = name.rpartition(":")
    return bool(sep) and file.endswith(".py") and bool(cls)


def method_class(name: str, method_file: str | Path | None = None) -> type[Method]:
    """The class for ``name``: registered (``simclr``) or ``FILE.py:ClassName``.

    ``method_file`` replaces the recorded file of a user method (a run moved elsewhere).
    """
    if not is_user_method(name):
        if method_file is not None:
            raise fail(f"--method-file is for runs of a method in a user file; {name!r} is a registered method")
        return METHODS.get(name)
    recorded, _, class_name = name.rpartition(":")
    path = Path(method_file if method_file is not None else recorded).expanduser()
    if not path.is_file():
        hint = "pass --method-file PATH to the file that defines it" if method_file is None else "check the path"
        raise fail(f"method file {path} (class {class_name}) does not exist; {hint}")
    module = _import_file(path.resolve())
    cls = getattr(module, class_name, None)
    if cls is None:
        found = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, Method)
                       and v is not Method and v.__module__ == module.__name__)
        raise fail(f"{path} defines no class {class_name!r}; its Method subclasses: {', '.join(found) or 'none'}")
    check_contract(cls, f"{path}:{class_name}")
    return cls


def check_contract(cls: type, where: str) -> None:
    """One-line errors for a class that does not keep the method contract (see methods/base.py)."""
    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise fail(f"{where} is not a subclass of reprlearn.methods.Method; derive your method from it")
    config = getattr(cls, "Config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise fail(f"{where} has no Config dataclass; declare `Config = MyConfig` with a @dataclass of its options")
    if cls.loss is Method.loss:
        raise fail(f"{where} does not define loss(views) -> dict with the total under 'loss'")


def method_spec(method: str | type) -> str:
    """The name a run records for ``method``: a registered name, or ``/abs/FILE.py:ClassName``."""
    if isinstance(method, str):
        if is_user_method(method):
            file, _, cls = method.rpartition(":")
            return f"{Path(file).expanduser().resolve()}:{cls}"
        return method
    for name in METHODS.names():
        if METHODS.get(name) is method:
            return name
    where = getattr(method, "__qualname__", repr(method))
    check_contract(method, where)
    if "<locals>" in method.__qualname__:
        raise fail(f"{where} is defined inside a function; define it at the top level of a file so a run can "
                   "import it again")
    try:
        file = Path(inspect.getfile(method)).resolve()
    except (TypeError, OSError):
        raise fail(f"{where} has no source file (defined interactively?); put it in a .py file") from None
    return f"{file}:{method.__qualname__}"


def short_name(spec: str) -> str:
    """A method's name for run folders and tables: ``simclr``, or the user class's name in lower case."""
    return spec.rpartition(":")[2].lower() if is_user_method(spec) else spec


def _import_file(path: Path):
    st = path.stat()
    version = (path, st.st_mtime_ns, st.st_size)
    if version in _LOADED:
        return _LOADED[version]
    # a class defined in the script that is running (python my_method.py) is that module already
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__file__", None) and Path(main.__file__).resolve() == path:
        _LOADED[version] = main
        return main
    name = "reprlearn_user_" + hashlib.sha1(repr(version).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise fail(f"{path} cannot be imported as a Python module; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file failed: say where, in one line
        del sys.modules[name]
        raise fail(f"importing {path} failed: {type(e).__name__}: {str(e)[:120]}") from None
    _LOADED[version] = module
    return module

"""reprlearn: learn representations from unlabeled data, then evaluate and use them.

>>> import reprlearn
>>> run = reprlearn.train("simclr", epochs=5)          # doctest: +SKIP
>>> encoder = reprlearn.load(run)                       # doctest: +SKIP
>>> features = reprlearn.embed(run, "digits:test")      # doctest: +SKIP
"""

__version__ = "0.1.0"

import sys  # noqa: E402
import types  # noqa: E402

from .errors import ReprlearnError  # noqa: E402

# the API's functions are looked up on first use: importing reprlearn (and so `reprlearn --help`)
# does not import torch and Lightning, which takes seconds
_API = ("train", "load", "embed", "evaluate_run", "methods")

__all__ = [*_API, "ReprlearnError", "__version__"]


def __getattr__(name: str):
    import importlib
    import importlib.util

    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    # `import reprlearn` used to import the API and with it most submodules; `reprlearn.api`,
    # `reprlearn.evaluate` ... still work without their own import
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


class _Package(types.ModuleType):
    """``reprlearn.methods`` is the API's function (the registered names), although a subpackage has the
    same name: importing the subpackage binds it on its parent, and that binding is ignored here."""

    @property
    def methods(self):
        from .api import methods

        return methods

    @methods.setter
    def methods(self, value) -> None:
        pass


sys.modules[__name__].__class__ = _Package

"""A tiny name -> factory registry, shared by methods and backbones.

Registration is explicit (a decorator in the module that defines the thing) and
lookup errors list what is available, so a typo gets a helpful one-line message.
A package can also keep a literal ``CATALOG`` of name -> module, read here from its
source without importing it (``reprlearn methods`` lists the methods without torch).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from pathlib import Path
from typing import Callable, Generic, Iterable, TypeVar

from .errors import fail

T = TypeVar("T")


def did_you_mean(word: str, names: Iterable[str], then: str = "", prefix: str = "") -> str:
    """``"; did you mean X?"`` (or ``X or Y``) for the names closest to ``word`` (difflib), then
    ``then`` as a sentence of its own: ``"; did you mean simclr? Choose one of: ..."``; with no
    close name just ``"; choose one of: ..."``. ``prefix`` is put before each name (``--``).
    """
    close = difflib.get_close_matches(word, list(names), n=3, cutoff=0.6)
    if not close:
        return f"; {then}" if then else ""
    text = f"; did you mean {' or '.join(prefix + c for c in close)}?"
    return f"{text} {then[:1].upper()}{then[1:]}" if then else text


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise fail(f"unknown {self.kind} {name!r}"
                       + did_you_mean(name, self._items, f"choose one of: {', '.join(self.names())}"))
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


def read_catalog(package: str, table: str = "CATALOG") -> dict[str, tuple[str, str]]:
    """name -> (module, the first paragraph of the module's docstring, as one line), read from ``package``'s source.

    Nothing of the package is executed (only its parent is imported to find it): the table is a
    literal dict assigned in its ``__init__.py``, the descriptions come from parsing each module.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise fail(f"package {package} not found")
    init = Path(spec.origin)
    entries = None
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == table for t in node.targets):
            entries = ast.literal_eval(node.value)
    if not isinstance(entries, dict):
        raise ValueError(f"{init} assigns no literal dict {table}")
    docs: dict[str, str] = {}
    for module in set(entries.values()):
        doc = ast.get_docstring(ast.parse((init.parent / f"{module}.py").read_text())) or ""
        docs[module] = " ".join(doc.strip().split("\n\n")[0].split())
    return {name: (module, docs[module]) for name, module in sorted(entries.items())}

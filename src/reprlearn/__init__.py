"""reprlearn: learn representations from unlabeled data, then evaluate and use them.

>>> import reprlearn
>>> run = reprlearn.train("simclr", epochs=5)          # doctest: +SKIP
>>> encoder = reprlearn.load(run)                       # doctest: +SKIP
>>> features = reprlearn.embed(run, "digits:test")      # doctest: +SKIP
"""

__version__ = "0.1.0"

from .api import embed, evaluate_run, load, methods, train  # noqa: E402
from .errors import ReprlearnError  # noqa: E402

__all__ = ["train", "load", "embed", "evaluate_run", "methods", "ReprlearnError", "__version__"]

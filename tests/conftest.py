"""Settings for the whole test run.

pytest-xdist runs two workers on a 2-core machine; each torch process defaults to one
thread per core, and four spinning OpenMP threads on two cores made training steps up to
40x slower. One thread per worker (and per subprocess it starts) keeps the cores busy
without oversubscription.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: on a shared 2-core machine two OpenMP threads spin
    against other processes and a training step gets ~30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

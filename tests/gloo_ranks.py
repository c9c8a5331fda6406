"""Run a test body on N CPU processes joined in one gloo process group (the DDP tests)."""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, body, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # several processes on a small machine
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        body(rank, world, out_dir)
    finally:
        dist.destroy_process_group()
    # The body passed and its results are on disk: leave without interpreter finalisation. A gloo
    # worker thread frees each finished collective's tensors a moment after the caller's wait returns;
    # when that lands during finalisation it needs the GIL, is made to exit, and the process aborts
    # ("terminate called without an active exception", about 1 run in 20 on a busy 2-core machine;
    # diagnosed with gdb on a core file). DDP keeps the process group, so its threads, alive past
    # destroy_process_group, hence no clean join. A failing body still raises to mp.spawn above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_on_ranks(body, world: int, out_dir) -> None:
    """``body(rank, world, out_dir)`` in ``world`` processes (a module-level function, so it pickles)."""
    mp.spawn(_entry, args=(body, world, _free_port(), str(out_dir)), nprocs=world, join=True)

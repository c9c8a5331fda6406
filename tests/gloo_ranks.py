"""Run a test body on N CPU processes joined in one gloo process group (the DDP tests)."""

import os
import socket

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


def run_on_ranks(body, world: int, out_dir) -> None:
    """``body(rank, world, out_dir)`` in ``world`` processes (a module-level function, so it pickles)."""
    mp.spawn(_entry, args=(body, world, _free_port(), str(out_dir)), nprocs=world, join=True)

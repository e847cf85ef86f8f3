"""Starting the tensor-parallel ranks and watching them.

One machine (`--tp N`): rank 0's process spawns ranks 1..N-1 as worker processes (multiprocessing "spawn"; the
settings are pickled once, at startup) and all join a torch.distributed group through a TCP store on a free
local port. Several machines (`--nnodes M --node-rank R --dist-init-addr HOST:PORT`): each machine runs
`lite-srt serve` with the same flags; node R hosts ranks R*N/M .. (R+1)*N/M-1, node 0's first rank is the
scheduler, and the other nodes' processes only host workers.

Faults: rank 0 watches its local workers' process sentinels from a thread; a death is reported to a callback,
which fails the requests in flight and, in the server, exits non-zero. Workers exit when rank 0's process goes
away (they poll their parent) or when a collective with it fails. Nothing waits forever on a dead peer.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from lite_srt.config import ServerArgs
from lite_srt.distributed.custom_all_reduce import CustomAllReduce
from lite_srt.distributed.group import TPGroup

logger = logging.getLogger(__name__)

# Workers wait in a collective for the next step for as long as the server is idle, so collectives get a
# timeout far beyond any idle period; dead peers are caught by the process watchdogs instead.
_COLLECTIVE_TIMEOUT = timedelta(days=3650)


@dataclass
class Workers:
    """This machine's worker processes (rank 0's node: ranks 1..; other nodes: all their ranks)."""

    procs: list[mp.process.BaseProcess] = field(default_factory=list)
    _stopping: bool = False

    def watch(self, on_death: Callable[[str], None]) -> None:
        """Call on_death (from a daemon thread) when a worker exits before `stop()`."""

        def run() -> None:
            alive = {p.sentinel: p for p in self.procs}
            while alive:
                for s in multiprocessing.connection.wait(list(alive)):
                    p = alive.pop(s)  # type: ignore[call-overload]
                    if not self._stopping:
                        on_death(
                            f"tensor-parallel worker {p.name} (pid {p.pid}) exited with code {p.exitcode}"
                        )
                        return

        if self.procs:
            threading.Thread(target=run, name="lite-srt-tp-watchdog", daemon=True).start()

    def stop(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` seconds for the workers to exit (after a stop message), then kill them."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]


def local_ranks(args: ServerArgs) -> range:
    per_node = args.tp_size // args.nnodes
    return range(args.node_rank * per_node, (args.node_rank + 1) * per_node)


# LITE_SRT_TP_ONE_GPU=1 puts every rank on GPU 0, with gloo in place of NCCL (which refuses two ranks on one
# GPU): a way to check the tensor-parallel GPU path (custom all-reduce, CUDA graphs) on a one-GPU machine. The
# ranks' kernels take turns on the GPU, so it is slow; a correctness check, never a configuration to measure.
_ONE_GPU = os.environ.get("LITE_SRT_TP_ONE_GPU", "0") == "1"


def rank_device(args: ServerArgs, rank: int) -> str:
    device = args.resolved_device
    if not device.startswith("cuda"):
        return device
    return "cuda:0" if _ONE_GPU else f"cuda:{rank % (args.tp_size // args.nnodes)}"


def init_addr(args: ServerArgs) -> str:
    return args.dist_init_addr or f"127.0.0.1:{_free_port()}"


def start_workers(args: ServerArgs, addr: str) -> Workers:
    """Spawn this machine's worker ranks (all local ranks but rank 0)."""
    ctx = mp.get_context("spawn")
    workers = Workers()
    for rank in local_ranks(args):
        if rank == 0:
            continue
        p = ctx.Process(
            target=_worker_entry, args=(args, rank, addr, os.getpid()), name=f"tp{rank}", daemon=True
        )
        p.start()
        logger.info("started tensor-parallel rank %d (pid %d)", rank, p.pid)
        workers.procs.append(p)
    return workers


def join_group(args: ServerArgs, rank: int, addr: str) -> TPGroup:
    """Join the tensor-parallel group: NCCL for model tensors on GPUs (gloo on the CPU), gloo for metadata."""
    device = rank_device(args, rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    backend = "nccl" if device.startswith("cuda") and not _ONE_GPU else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://{addr}",
        rank=rank,
        world_size=args.tp_size,
        timeout=_COLLECTIVE_TIMEOUT,
    )
    world = dist.group.WORLD
    cpu = dist.new_group(backend="gloo", timeout=_COLLECTIVE_TIMEOUT) if backend == "nccl" else world
    tp = TPGroup(rank, args.tp_size, world, cpu)
    if (
        device.startswith("cuda") and args.nnodes == 1 and not args.disable_custom_all_reduce
    ):  # IPC: one machine
        local = [int(rank_device(args, r).split(":")[1]) for r in local_ranks(args)]
        tp = dataclasses.replace(tp, custom_ar=CustomAllReduce.create(tp, torch.device(device), local))
    return tp


def group_active() -> bool:
    return dist.is_initialized()


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def run_node(args: ServerArgs) -> int:
    """`lite-srt serve --node-rank R` (R > 0): host this machine's ranks until they exit; their exit code."""
    from lite_srt.engine.async_engine import resolve_model_path
    from lite_srt.loader import load_model_config

    path = resolve_model_path(args)
    ctx = args.context_length or load_model_config(path).max_position_embeddings
    assert args.dist_init_addr is not None  # ServerArgs requires it with --nnodes > 1
    workers = start_workers(args.replace(model_path=path, context_length=ctx), args.dist_init_addr)
    logger.info("node %d: hosting ranks %s", args.node_rank, list(local_ranks(args)))
    for p in workers.procs:
        p.join()
    return max((p.exitcode or 0 for p in workers.procs), default=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_entry(args: ServerArgs, rank: int, addr: str, parent_pid: int) -> None:
    from lite_srt.distributed.worker import run_worker  # imported in the child: keeps the spawn pickle small

    run_worker(args, rank, addr, parent_pid)

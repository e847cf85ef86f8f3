"""A worker rank: load this rank's shard, then run every step rank 0 sends until it says stop.

Runs in its own process (spawned by rank 0, or started by `lite-srt serve --node-rank R` on another machine).
Its only thread that touches the model is the main thread; it never schedules, samples or talks HTTP.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import torch

from lite_srt.config import ServerArgs
from lite_srt.distributed.group import TPGroup
from lite_srt.distributed.launch import join_group, leave_group, rank_device
from lite_srt.distributed.step_sync import recv_step
from lite_srt.engine.model_runner import ModelRunner
from lite_srt.loader import load_model_config

logger = logging.getLogger(__name__)


def run_worker(args: ServerArgs, rank: int, addr: str, parent_pid: int | None) -> None:
    logging.basicConfig(
        level=args.log_level.upper(), format=f"%(asctime)s tp{rank} %(levelname)s %(name)s: %(message)s"
    )
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    try:
        limit_cpu_threads(args)
        tp = join_group(args, rank, addr)
        assert args.model_path is not None and args.context_length is not None  # resolved by rank 0's node
        cfg = load_model_config(args.model_path)
        runner = ModelRunner(
            args.replace(device=rank_device(args, rank)), cfg, args.model_path, args.context_length, tp
        )
        logger.info("tensor-parallel rank %d of %d ready", rank, args.tp_size)
        serve(runner, tp)
    except Exception:
        logger.exception("tensor-parallel rank %d failed", rank)
        os._exit(1)  # the watchdog on rank 0 turns this into failed requests and a non-zero exit
    leave_group()


def serve(runner: ModelRunner, tp: TPGroup) -> None:
    """Follow rank 0's steps until it sends stop."""
    while (got := recv_step(tp, runner.table.table, runner.device)) is not None:
        msg, writes = got
        runner.follow(msg.batch, msg.sample_rows, writes)


def limit_cpu_threads(args: ServerArgs) -> None:
    """CPU ranks on one machine share its cores; without a cap each would start one thread per core."""
    if not args.resolved_device.startswith("cuda"):
        per_node = max(1, args.tp_size // args.nnodes)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))


def _exit_with_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)  # rank 0 is gone: nobody will send another step

    threading.Thread(target=watch, name="lite-srt-parent-watch", daemon=True).start()

"""Where the custom all-reduce may be used, decided without a GPU (the kernel itself: test_custom_all_reduce_gpu)."""

from __future__ import annotations

import argparse

import torch

from lite_srt.config import ServerArgs
from lite_srt.distributed.custom_all_reduce import CustomAllReduce, unusable_reason
from lite_srt.distributed.group import TPGroup


def test_cpu_ranks_do_not_use_it() -> None:
    assert unusable_reason(torch.device("cpu"), [0, 1]) == "not on a GPU"
    assert CustomAllReduce.create(TPGroup.single(), torch.device("cpu"), [0, 1]) is None


def test_graph_safe_needs_the_custom_all_reduce_above_one_rank() -> None:
    assert TPGroup.single().graph_safe
    assert not TPGroup(0, 2).graph_safe


def test_fits_by_size_alignment_and_dtype() -> None:
    car = CustomAllReduce.__new__(CustomAllReduce)  # no buffers: only the size rule is under test
    car.capacity = 1024
    meta = torch.empty(256, dtype=torch.float32)
    assert not car.fits(meta)  # a CPU tensor never fits
    assert car.max_rows(64, torch.bfloat16) == 8
    assert car.max_rows(64, torch.float32) == 4


def test_flag_parses() -> None:
    p = argparse.ArgumentParser()
    ServerArgs.add_cli_args(p)
    assert ServerArgs.from_cli_args(p.parse_args(["--disable-custom-all-reduce"])).disable_custom_all_reduce
    assert not ServerArgs.from_cli_args(p.parse_args([])).disable_custom_all_reduce

"""The custom all-reduce (CUDA IPC, one-shot) against NCCL: a correctness check, then latency by size.

One process per GPU, like the tensor-parallel ranks. The check (always run, exit code 1 on any mismatch):
- every dtype and several sizes, bit-exact against the float32 sum in rank order (the kernel's order);
- 300 back-to-back calls of changing sizes with random per-rank GPU delays (the two buffer halves and the
  flags must hold up when ranks drift apart);
- a CUDA graph holding three all-reduces, replayed on fresh data;
- at 2 ranks, float32 results equal NCCL's (a sum of two is order-free).
Then (unless --check-only) it times each size eagerly and inside a CUDA graph (custom only: NCCL is eager here)
and prints a table last; --json writes the rows.

  python scripts/bench_all_reduce.py --nproc 2 [--check-only] [--json all_reduce.json]

--same-gpu puts every rank on GPU 0 (the processes' kernels then take turns on it): a functional check on a
one-GPU machine; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import queue
import socket
import sys
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lite_srt.distributed.custom_all_reduce import CustomAllReduce
from lite_srt.distributed.group import TPGroup

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class Row:
    bytes: int
    custom_eager_us: float
    custom_graph_us: float
    nccl_eager_us: float


def rank_input(rank: int, case: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Rank `rank`'s input for check `case`, reproducible on every rank (each rank builds the expected sum)."""
    g = torch.Generator().manual_seed(1000 * case + rank)
    return torch.randn(numel, generator=g).to(dtype)


def expected_sum(world: int, case: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    acc = rank_input(0, case, numel, dtype).float()
    for r in range(1, world):
        acc = acc + rank_input(r, case, numel, dtype).float()
    return acc.to(dtype)


def check(car: CustomAllReduce, rank: int, world: int) -> list[str]:
    failures: list[str] = []
    dev = torch.device("cuda", torch.cuda.current_device())
    cap = car.capacity
    case = 0
    sizes_bytes = [16, 2304, 8192, 3 * 4096 * 2, 64 * 4096 * 2, cap]
    for dtype in DTYPES:
        es = dtype.itemsize
        for nbytes in sizes_bytes:
            case += 1
            numel = nbytes // es
            t = rank_input(rank, case, numel, dtype).to(dev)
            car.all_reduce(t)
            if not torch.equal(t.cpu(), expected_sum(world, case, numel, dtype)):
                failures.append(f"{dtype} {nbytes} B: not the rank-order sum")

    # Drift: random GPU delays per rank, sizes that change every call (small/large grids share the buffers).
    gen = torch.Generator().manual_seed(7 + rank)
    pending = []
    for i in range(300):
        case += 1
        dtype = DTYPES[i % 3]
        es = dtype.itemsize
        numel = [16, 4096, 256 * 1024, cap][i % 4] // es
        t = rank_input(rank, case, numel, dtype).to(dev)
        torch.cuda._sleep(int(torch.randint(0, 200_000, (1,), generator=gen)))
        car.all_reduce(t)
        pending.append((case, numel, dtype, t))
    torch.cuda.synchronize()
    bad = [c for c, n, d, t in pending if not torch.equal(t.cpu(), expected_sum(world, c, n, d))]
    if bad:
        failures.append(f"drift: {len(bad)} of {len(pending)} calls wrong (first case {bad[0]})")

    # A graph with three all-reduces (small, large, small), replayed on fresh inputs.
    small = torch.zeros(4096, dtype=torch.bfloat16, device=dev)
    large = torch.zeros(512 * 1024, dtype=torch.bfloat16, device=dev)
    for _ in range(2):  # warm-up outside capture, as the engine does
        car.all_reduce(small), car.all_reduce(large)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        car.all_reduce(small)
        car.all_reduce(large)
        small.mul_(2)
        car.all_reduce(small)
    for i in range(20):
        case += 1
        small.copy_(rank_input(rank, case, small.numel(), torch.bfloat16))
        large.copy_(rank_input(rank, case + 10_000, large.numel(), torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        want_small = expected_sum(world, case, small.numel(), torch.bfloat16)
        want_small = (want_small * 2).to(torch.bfloat16) * world  # second reduce sums world equal copies
        want_large = expected_sum(world, case + 10_000, large.numel(), torch.bfloat16)
        if not torch.equal(large.cpu(), want_large):
            failures.append(f"graph replay {i}: large all-reduce wrong")
        if not torch.allclose(small.cpu().float(), want_small.float(), rtol=1e-2, atol=1e-2):
            failures.append(f"graph replay {i}: small all-reduce wrong")

    if world == 2 and dist.get_backend() == "nccl":  # a two-term sum is the same in any order
        case += 1
        t = rank_input(rank, case, 4096 * 8, torch.float32).to(dev)
        ref = t.clone()
        dist.all_reduce(ref)
        car.all_reduce(t)
        if not torch.equal(t, ref):
            failures.append("float32 differs from NCCL at 2 ranks")
    return failures


def time_us(fn, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / iters


def bench(car: CustomAllReduce, sizes: list[int], iters: int) -> list[Row]:
    rows = []
    dev = torch.device("cuda", torch.cuda.current_device())
    for nbytes in sizes:
        t = torch.randn(nbytes // 2, device=dev).to(torch.bfloat16)
        dist.barrier()
        custom = time_us(lambda t=t: car.all_reduce(t), iters)
        dist.barrier()
        nccl = time_us(lambda t=t: dist.all_reduce(t), iters)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            for _ in range(iters):
                car.all_reduce(t)
        dist.barrier()
        in_graph = time_us(graph.replay, 3) / iters
        rows.append(Row(nbytes, custom, in_graph, nccl))
    return rows


def worker(rank: int, world: int, port: int, a: argparse.Namespace, out: mp.Queue) -> None:
    try:
        gpu = 0 if a.same_gpu else rank
        torch.cuda.set_device(gpu)
        # gloo only with --same-gpu: NCCL refuses two ranks on one GPU
        dist.init_process_group(
            "gloo" if a.same_gpu else "nccl",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
        )
        cpu = dist.new_group(backend="gloo")
        gpus = [0] * world if a.same_gpu else list(range(world))
        car = CustomAllReduce.create(TPGroup(rank, world, None, cpu), torch.device("cuda", gpu), gpus)
        if car is None:
            out.put((rank, ["custom all-reduce unavailable (see the log)"], []))
            return
        failures = check(car, rank, world)
        rows = [] if a.check_only or a.same_gpu or failures else bench(car, a.sizes, a.iters)
        out.put((rank, failures, [asdict(r) for r in rows]))
        dist.barrier(group=cpu)
        dist.destroy_process_group()
    except Exception as e:  # reported, not lost: the parent waits for one message per rank
        out.put((rank, [f"{type(e).__name__}: {e}"], []))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=torch.cuda.device_count())
    p.add_argument("--check-only", action="store_true")
    p.add_argument("--same-gpu", action="store_true", help="every rank on GPU 0 (functional check only)")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[8192, 32768, 131072, 524288, 2 << 20, 8 << 20],
    )
    p.add_argument("--json")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the ranks (a hang fails)")
    a = p.parse_args()
    if a.same_gpu:
        a.nproc = max(a.nproc, 2)
    if a.nproc < 2:
        print(f"needs at least 2 GPUs, found {a.nproc} (or pass --same-gpu)")
        return 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, a.nproc, port, a, out)) for r in range(a.nproc)]
    for proc in procs:
        proc.start()
    results = {}
    try:
        for _ in procs:
            rank, failures, rows = out.get(timeout=a.timeout)
            results[rank] = (failures, rows)
    except queue.Empty:
        print(f"FAIL: {a.nproc - len(results)} rank(s) sent nothing within {a.timeout:.0f} s (hung?)")
        for proc in procs:
            proc.kill()
        return 1
    for proc in procs:
        proc.join(60)
    failed = False
    for rank in sorted(results):
        for f in results[rank][0]:
            print(f"rank {rank}: FAIL {f}")
            failed = True
    print(f"correctness: {'FAILED' if failed else 'ok'} ({a.nproc} ranks)")
    rows = results[0][1]
    if rows:
        print(f"{'bytes':>10} {'custom eager us':>16} {'custom graph us':>16} {'nccl eager us':>14}")
        for r in rows:
            print(
                f"{r['bytes']:>10} {r['custom_eager_us']:>16.2f} {r['custom_graph_us']:>16.2f}"
                f" {r['nccl_eager_us']:>14.2f}"
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"nproc": a.nproc, "failed": failed, "rows": rows}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

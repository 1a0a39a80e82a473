"""Cost of a DP-SGD step (Opacus) against a plain SGD step, per grad-sample mode.

In one process, for the FedAvg CNN on 8x8x1 digits input and on 28x28x1 input
(1,663,370 parameters), batch sizes 10 and 64: one plain step (zero_grad, forward,
cross-entropy, backward, SGD) against one private step through
`fedsim.client.dp.PrivateTraining` (per-example clipping, Gaussian noise, SGD) for
each exact Opacus mode. Every variant gets the same fixed batch of B examples (a
Poisson batch only has B examples on average). Steps are interleaved round-robin
across variants so load from other processes hits all of them alike; after the
warm-up the median is reported. By default the clock is the thread's CPU time
(with one torch thread all the work runs on the calling thread), which other
processes on a shared machine disturb far less than wall time.

"functorch" and "ew" are timed for comparison only: they crash on the empty
batches Poisson sampling produces, so `train_dp` offers "ghost" and "hooks".

    python benchmarks/bench_dp.py [--steps 15 --warmup 3 --threads 1 --malloc-tuning]

--malloc-tuning raises glibc's mmap and trim thresholds first (as the environment
variables MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ would), so the large
per-step tensors are reused instead of being mapped and zero-faulted every step.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedsim.client.dp import DPSGD, PrivateTraining, _dataset
from fedsim.client.dp_random import DPRandomness
from fedsim.fedmodels.models import FedAvgCNN, count_parameters

MODES = ("hooks", "ghost", "functorch", "ew")
SHAPES = ((1, 8, 8), (1, 28, 28))
BATCHES = (10, 64)
TARGET = 2.5
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def tune_malloc() -> None:
    """Keep freed memory in the heap (glibc only): no mmap/munmap per step."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's maximum
    libc.mallopt(m_trim_threshold, 1024 * 1024 * 1024)


def plain_step(shape: tuple[int, ...], xb: torch.Tensor, yb: torch.Tensor) -> Callable:
    model = FedAvgCNN(shape, 10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        optimizer.step()

    return step


def private_step(
    shape: tuple[int, ...], mode: str, xb: torch.Tensor, yb: torch.Tensor
) -> tuple[Callable, PrivateTraining]:
    model = FedAvgCNN(shape, 10).train()
    data = _dataset(np.repeat(xb.numpy(), 4, axis=0), np.repeat(yb.numpy(), 4))
    sgd = DPSGD(batch_size=len(yb), lr=0.05, noise_multiplier=1.0, max_grad_norm=1.0)
    private = PrivateTraining(
        model, data, sgd, device=torch.device("cpu"), randomness=DPRandomness.secret_source(),
        grad_sample_mode=mode,  # type: ignore[arg-type]
    )
    return (lambda: private.step(xb, yb)), private


def time_round_robin(
    steps: dict[str, Callable], warmup: int, repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Median ms per step of each variant, the variants interleaved step by step."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            start = clock()
            step()
            if i >= warmup:
                times[name].append((clock() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_config(shape: tuple[int, ...], batch: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    xb = torch.rand(batch, *shape)
    yb = torch.randint(0, 10, (batch,))
    steps = {"plain": plain_step(shape, xb, yb)}
    opened = []
    for mode in args.modes:
        steps[mode], private = private_step(shape, mode, xb, yb)
        opened.append(private)
    try:
        return time_round_robin(steps, args.warmup, args.steps, CLOCKS[args.clock])
    finally:
        for private in opened:
            private.close()


def report(shape: tuple[int, ...], batch: int, ms: dict[str, float]) -> str:
    params = count_parameters(FedAvgCNN(shape, 10))
    lines = [f"{shape[1]}x{shape[2]}x{shape[0]} ({params:,} params), B={batch}: "
             f"non-private {ms['plain']:.2f} ms/step"]
    for mode in (m for m in ms if m != "plain"):
        ratio = ms[mode] / ms["plain"]
        lines.append(f"  {mode:<10} {ms[mode]:8.2f} ms/step  {ratio:5.2f}x")
    fastest = min((m for m in ms if m != "plain"), key=ms.__getitem__)
    ratio = ms[fastest] / ms["plain"]
    verdict = "meets" if ratio <= TARGET else "misses"
    lines.append(f"  fastest: {fastest} ({ratio:.2f}x; {verdict} the {TARGET}x target)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--malloc-tuning", action="store_true")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu",
        help="cpu: this thread's CPU time (user+sys; steady on a shared machine, "
        "exact with --threads 1); wall: elapsed time",
    )
    args = parser.parse_args()
    if args.malloc_tuning:
        tune_malloc()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} time, "
          f"median of {args.steps} steps after {args.warmup} warm-up, malloc tuning "
          f"{'on' if args.malloc_tuning else 'off'}")
    for shape in SHAPES:
        for batch in BATCHES:
            print(report(shape, batch, bench_config(shape, batch, args)), flush=True)


if __name__ == "__main__":
    main()

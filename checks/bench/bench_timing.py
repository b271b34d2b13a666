"""Timing helpers shared by the benchmark modules (their in-run reference timings; pytest-benchmark times ours)."""

import time

import torch


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device, repeat: int = 5) -> float:
    """The best wall time of ``fn`` over ``repeat`` runs after one warm-up run, the device synchronised."""
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best

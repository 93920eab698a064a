"""Run the points of an experiment, in this process or in worker processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable


def run_points(function: Callable, points: Sequence[tuple], jobs: int = 1,
               done: Callable[[int, tuple, object], None] | None = None) -> list:
    """``[function(*point) for point in points]``, in ``jobs`` processes (1: this one).

    ``done(count, point, value)`` is called as each point finishes. Workers are spawned,
    not forked (fork is unsafe with CUDA and OpenMP), so ``function`` must be importable.
    """
    values = [None] * len(points)
    if jobs == 1:
        for count, point in enumerate(points, 1):
            values[count - 1] = function(*point)
            if done is not None:
                done(count, point, values[count - 1])
        return values
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {pool.submit(function, *point): i for i, point in enumerate(points)}
        for count, future in enumerate(as_completed(futures), 1):
            index = futures[future]
            values[index] = future.result()
            if done is not None:
                done(count, points[index], values[index])
    return values

"""How many CPU threads a fit's steps run on: a fixed count, or "auto", which times real steps.

A small network's step gains from a second thread on a quiet machine and loses on a busy one (or
on a virtual machine whose cores are shared, where it changes from second to second), so "auto"
keeps timing short blocks of the fit's own steps on 1, 2, 4 ... threads (the cores this process may
use, at most 8) and runs the others on the faster count.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Dict, List, Optional, Union

import torch

from .errors import InputError

AUTO = "auto"
MAX_CANDIDATE = 8
BLOCK_STEPS = 8  # steps on one count; the first settles (threads wake up), the others are timed
PERIOD_STEPS = 96  # each period: a block on the current count, one on a challenger, the rest on the faster
TIMED_STEPS = BLOCK_STEPS - 1

_last_choice: Dict[tuple, int] = {}  # candidates -> the count this process's last fit ended on

Threads = Union[int, str, None]


def check_threads(threads: Threads) -> Threads:
    """A positive count, "auto" or None (leave torch's setting); anything else is an InputError."""
    if threads is None or threads == AUTO:
        return threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive number or {AUTO!r}, got {threads!r}")
    return threads


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def candidate_counts(cores: Optional[int] = None) -> List[int]:
    """1, 2, 4 ... up to the usable cores and MAX_CANDIDATE."""
    cores = min(usable_cores() if cores is None else cores, MAX_CANDIDATE)
    counts, count = [], 1
    while count <= cores:
        counts.append(count)
        count *= 2
    return counts


@contextlib.contextmanager
def torch_threads(threads: Threads):
    """Run with a fixed thread count, or leave it to a ThreadChooser ("auto"); restore torch's after."""
    threads = check_threads(threads)
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    if threads != AUTO:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class ThreadChooser:
    """Sets the thread count before each step of a fit. With "auto" on a CPU, the steps run in periods
    of PERIOD_STEPS: a block of BLOCK_STEPS on the current count, one on a challenger (the other
    candidates in turn), then the rest of the period on whichever of the two ran faster. A machine
    whose load changes during a fit is followed within a period. The first fit starts on the most
    threads, later fits in this process on the count the last one ended on."""

    def __init__(self, threads: Threads, device: torch.device, candidates: Optional[List[int]] = None):
        threads = check_threads(threads)
        self.candidates = candidate_counts() if candidates is None else list(candidates)
        self.auto = threads == AUTO and torch.device(device).type == "cpu" and len(self.candidates) > 1
        self.current = _last_choice.get(tuple(self.candidates), self.candidates[-1])
        self.step_seconds: Dict[int, List[float]] = {count: [] for count in self.candidates}
        self.steps_by_threads: Dict[int, int] = {}
        self._period_times: Dict[int, float] = {}
        self._block_started = 0.0

    def _block(self, iteration: int):
        """(block in the period: 0 current, 1 challenger, None the rest; step in the block)."""
        step = (iteration - 1) % PERIOD_STEPS
        block = step // BLOCK_STEPS
        return (block if block < 2 else None), step % BLOCK_STEPS

    def _challenger(self, iteration: int) -> int:
        """The period's challenger: the candidates other than the current one, in turn."""
        period = (iteration - 1) // PERIOD_STEPS
        others = [count for count in self.candidates if count != self.current]
        return others[period % len(others)]

    def before_step(self, iteration: int) -> None:
        if not self.auto:
            return
        block, step = self._block(iteration)
        count = self.current if block != 1 else self._challenger(iteration)
        if step == 0 or block is None:
            if torch.get_num_threads() != count:
                torch.set_num_threads(count)
        if block is not None and step == 1:
            self._block_started = time.perf_counter()

    def after_step(self, iteration: int) -> None:
        count = torch.get_num_threads()
        self.steps_by_threads[count] = self.steps_by_threads.get(count, 0) + 1
        if not self.auto:
            return
        block, step = self._block(iteration)
        if block is None or step != BLOCK_STEPS - 1:
            return
        per_step = (time.perf_counter() - self._block_started) / TIMED_STEPS
        self.step_seconds[count].append(per_step)
        self._period_times[block] = per_step
        if block == 1:
            challenger = self._challenger(iteration)
            if self._period_times[1] < self._period_times[0]:
                self.current = challenger
            self._period_times = {}

    def finish(self) -> None:
        if self.auto:
            _last_choice[tuple(self.candidates)] = self.current

    def report(self) -> dict:
        """The count most steps ran on, the steps per count, and with "auto" each count's median timed step."""
        steps = self.steps_by_threads or {torch.get_num_threads(): 0}
        out = {"threads": max(steps, key=steps.get), "steps_by_threads": {str(k): v for k, v in sorted(steps.items())}}
        if self.auto:
            out["step_ms_by_threads"] = {str(count): round(1000.0 * statistics.median(seconds), 3)
                                         for count, seconds in self.step_seconds.items() if seconds}
        return out

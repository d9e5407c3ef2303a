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
from typing import Callable, Dict, List, Optional, Union

import torch

from .errors import InputError

AUTO = "auto"
MAX_CANDIDATE = 8
BLOCK_STEPS = 8  # steps on one count; the first settles (threads wake up), the others are timed
PERIOD_STEPS = 96  # each period: a block on the current count, one on a challenger, the rest on the faster
TIMED_STEPS = BLOCK_STEPS - 1
CLEAR_LOSS = 1.1  # a challenger this much slower than the current count lost clearly...
MAX_BACKOFF = 3  # ...and sits out 1, 3, 7 periods after 1, 2, 3 (or more) clear losses in a row

_memory: Dict[tuple, dict] = {}  # candidates -> where this process's last fit left the choice

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
    whose load changes during a fit is followed within a period; a challenger that keeps losing
    clearly is tried less often (every 2, 4, 8 periods). The first fit starts on the most threads,
    later fits in this process where the last one left off."""

    def __init__(self, threads: Threads, device: torch.device, candidates: Optional[List[int]] = None,
                 clock: Callable[[], float] = time.perf_counter):
        threads = check_threads(threads)
        self.clock = clock
        self.candidates = candidate_counts() if candidates is None else list(candidates)
        self.auto = threads == AUTO and torch.device(device).type == "cpu" and len(self.candidates) > 1
        memory = _memory.get(tuple(self.candidates), {})
        self.current = memory.get("current", self.candidates[-1])
        self.losses: Dict[int, int] = dict(memory.get("losses", {}))  # clear losses in a row per challenger
        self.sitting_out: Dict[int, int] = dict(memory.get("sitting_out", {}))  # periods left per challenger
        self.steps_by_threads: Dict[int, int] = {}
        self.duels: List[dict] = []  # per duel: period, current, challenger, seconds per step of each, winner
        self._turn = 0
        self._challenger: Optional[int] = None
        self._block_started = self._current_per_step = 0.0

    def _position(self, iteration: int):
        """(period, block in the period: 0 current, 1 challenger, None the rest; step in the block)."""
        step = (iteration - 1) % PERIOD_STEPS
        block = step // BLOCK_STEPS
        return (iteration - 1) // PERIOD_STEPS, (block if block < 2 else None), step % BLOCK_STEPS

    def _start_period(self) -> None:
        """Pick this period's challenger: the next candidate in turn that is not sitting out, if any."""
        others = [count for count in self.candidates if count != self.current]
        self._challenger = None
        for offset in range(len(others)):
            count = others[(self._turn + offset) % len(others)]
            if self.sitting_out.get(count, 0) == 0:
                self._challenger, self._turn = count, self._turn + offset + 1
                break
        for count in others:
            if count != self._challenger and self.sitting_out.get(count, 0) > 0:
                self.sitting_out[count] -= 1

    def before_step(self, iteration: int) -> None:
        if not self.auto:
            return
        _, block, step = self._position(iteration)
        if block == 0 and step == 0:
            self._start_period()
        dueling = self._challenger is not None and block is not None
        count = self._challenger if dueling and block == 1 else self.current
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)
        if dueling and step == 1:
            self._block_started = self.clock()

    def after_step(self, iteration: int) -> None:
        count = torch.get_num_threads()
        self.steps_by_threads[count] = self.steps_by_threads.get(count, 0) + 1
        if not self.auto or self._challenger is None:
            return
        period, block, step = self._position(iteration)
        if block is None or step != BLOCK_STEPS - 1:
            return
        per_step = (self.clock() - self._block_started) / TIMED_STEPS
        if block == 0:
            self._current_per_step = per_step
            return
        challenger, current = self._challenger, self._current_per_step
        self.duels.append({"period": period, "current": self.current, "challenger": challenger,
                           "current_s": current, "challenger_s": per_step,
                           "winner": challenger if per_step < current else self.current})
        if per_step < current:
            self.losses.pop(challenger, None)
            self.losses.pop(self.current, None)
            self.current = challenger
        elif per_step > CLEAR_LOSS * current:
            self.losses[challenger] = self.losses.get(challenger, 0) + 1
            self.sitting_out[challenger] = 2 ** min(self.losses[challenger], MAX_BACKOFF) - 1
        else:
            self.losses.pop(challenger, None)

    def finish(self) -> None:
        if self.auto:
            _memory[tuple(self.candidates)] = {"current": self.current, "losses": dict(self.losses),
                                               "sitting_out": dict(self.sitting_out)}

    def report(self) -> dict:
        """The count most steps ran on, the steps per count, and with "auto" each count's median timed step."""
        steps = self.steps_by_threads or {torch.get_num_threads(): 0}
        out = {"threads": max(steps, key=steps.get), "steps_by_threads": {str(k): v for k, v in sorted(steps.items())}}
        if self.auto:
            timed: Dict[int, List[float]] = {}
            for duel in self.duels:
                timed.setdefault(duel["current"], []).append(duel["current_s"])
                timed.setdefault(duel["challenger"], []).append(duel["challenger_s"])
            out["step_ms_by_threads"] = {str(count): round(1000.0 * statistics.median(seconds), 3)
                                         for count, seconds in sorted(timed.items())}
        return out

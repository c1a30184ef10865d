"""How many threads llama.cpp computes with: every core while nothing else
wants the CPU, half of them while something does.

On an idle 2-core machine a plan's tokens come 1.5x faster on both cores
than on one (45 ms instead of 67 ms a token here) and its words are
evaluated twice as fast. But llama.cpp's threads spin at every barrier of
every layer while they wait for each other: when another process holds a
core, each barrier waits for the descheduled thread, and a token on both
cores took 80-450 ms (median 190 ms) beside one busy process, where one
thread kept its 67 ms. The number of threads does not change the answer
(each output row is computed by one thread; a test holds this to the last
bit), so it can change between two tokens of one plan.

:class:`ThreadGovernor` watches the time of each generated token. ``RUN``
tokens in a row slower than ``SLOW`` times the fastest token seen on every
core mean something else is running: the rest of the plan, and everything
for the next ``HOLD_S`` seconds, computes on half the cores. Then every core
is tried again. On a machine that stays busy this costs three slow tokens
(about half a second) every half minute; on an idle one, a hiccup of the
host (single tokens up to 1.7x slower were seen) changes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable

SLOW = 2.0  # idle tokens vary by up to ~1.7x here; beside a busy process, ~4x
RUN = 3  # slow tokens in a row that mean the CPU is wanted elsewhere
HOLD_S = 30.0  # then half the cores for this long


class ThreadGovernor:
    """Threads for the next evaluation: ``full`` unless generation on ``full``
    was recently seen to be contended, then ``half``. With ``full == half``
    (one core, or a number fixed in the manifest) it never changes."""

    def __init__(
        self,
        full: int,
        half: int | None = None,
        *,
        hold_s: float = HOLD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.full = max(1, full)
        self.half = max(1, min(self.full, self.full // 2 if half is None else half))
        self.hold_s = hold_s
        self._clock = clock
        self._best: float | None = None  # fastest token seen on ``full`` threads
        self._slow = 0  # slow tokens in a row on ``full`` threads
        self._calm_at = float("-inf")  # on ``half`` until then
        self.contended = 0  # times generation was moved to ``half``

    def threads(self) -> int:
        return self.full if self._clock() >= self._calm_at else self.half

    def token(self, threads: int, seconds: float) -> int:
        """Record the time of one generated token computed on ``threads``;
        returns the threads for the next one."""
        if threads == self.full and self.full > self.half:
            if self._best is not None and seconds > SLOW * self._best:
                self._slow += 1
                if self._slow >= RUN:
                    self._slow = 0
                    self._calm_at = self._clock() + self.hold_s
                    self.contended += 1
            else:
                self._slow = 0
            self._best = seconds if self._best is None else min(self._best, seconds)
        return self.threads()

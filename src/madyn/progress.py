"""Progress lines for long work (training steps, checkpoints measured): one line on stderr
at most every few seconds, with the rate and the time left."""

from __future__ import annotations

import sys
import time


class Progress:
    """Periodic one-line progress reports (step, loss, rate, time left) on stderr."""

    def __init__(self, name: str, total: int, every_s: float = 10.0):
        self.name, self.total, self.every_s = name, total, every_s
        self.t0 = self.last = time.monotonic()

    def update(self, step: int, loss: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        el = now - self.t0
        left = el / max(step, 1) * (self.total - step)
        print(f"[{self.name}] step {step}/{self.total} loss {loss:.3f} "
              f"elapsed {el:.0f}s left {left:.0f}s", file=sys.stderr, flush=True)

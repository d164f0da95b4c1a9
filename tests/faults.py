"""Faults injected into a real training run through the loop's step hooks (``fit(..., hooks=...)``):
the package itself holds no fault code."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import ray.cloudpickle

# The hooks travel to Ray Train's workers pickled; by value, so that a worker process need not
# find this test module on its own import path.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass(frozen=True)
class KillOnce:
    """SIGKILL the worker process of ``rank`` once, before step ``step`` of epoch ``epoch``.

    The marker file makes it fire only on the first attempt, so the restarted group can finish;
    it holds the killed process's id."""

    epoch: int
    step: int
    marker: str
    rank: int = 0

    def on_step(self, epoch: int, step: int, rank: int) -> None:
        if (epoch, step, rank) != (self.epoch, self.step, self.rank):
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)

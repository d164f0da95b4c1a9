"""A trial's state from what Tune knows of it, and the live status line a sweep prints."""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from yt8m_search import logs
from yt8m_search.results import LIVE_STATES, TrialState


def trial_state(status: str, result: dict[str, Any] | None, error: bool, epochs: int) -> TrialState:
    """complete / stopped (by ASHA) / error / running / pending, from a Tune trial's status, its last
    result and whether it failed; ``epochs``: a full trial's epochs. (Infeasible configurations are
    never Tune trials: the searcher rejects them, and the trials table adds them after the sweep.)"""
    if error or status == "ERROR":
        return TrialState.ERROR
    if status in ("RUNNING", "PENDING", "PAUSED"):
        return TrialState.RUNNING if result and "epoch" in result else TrialState.PENDING
    if not result or "epoch" not in result:
        return TrialState.PENDING
    return TrialState.COMPLETE if result["epoch"] >= epochs else TrialState.STOPPED


class LiveView(tune.Callback):
    """One status line whenever the picture changes (at most every 2 s): Tune trials by state and the
    best GAP so far; on the terminal (``logs.say``) unless given a ``stream``. Rejected (infeasible)
    configurations are not Tune trials and not counted here; the summary counts them."""

    def __init__(self, epochs: int, stream: Any = None) -> None:
        self.epochs, self.stream = epochs, stream
        self.setup()

    def setup(self, **info: Any) -> None:
        # also called after ``--resume``, on the copy of this callback that Tune stored with the sweep
        self.last, self.printed_at, self.started = "", 0.0, time.monotonic()

    def line(self, trials: list[Any]) -> str:
        counts = {s.value: 0 for s in LIVE_STATES}
        best = None
        for t in trials:
            state = trial_state(t.status, t.last_result, t.status == "ERROR", self.epochs)
            counts[state.value] += 1
            gap = (t.last_result or {}).get("gap_best")
            if gap is not None:
                best = gap if best is None else max(best, gap)
        best_text = f"{best:.4f}" if best is not None else "-"
        return " | ".join(f"{k} {v}" for k, v in counts.items()) + f" | best GAP {best_text}"

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._show(trials, force=False)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._show(trials, force=True)

    def _show(self, trials: list[Any], force: bool) -> None:
        text, now = self.line(trials), time.monotonic()
        if force or (text != self.last and now - self.printed_at >= 2.0):
            elapsed = int(now - self.started)
            line = f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}"
            if self.stream is None:
                logs.say(line)
            else:
                print(line, file=self.stream, flush=True)
            self.last, self.printed_at = text, now

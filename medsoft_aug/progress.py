"""Progress reporting without UI imports: stages call a plain callback; the CLI renders it with rich on stderr."""
from __future__ import annotations

from typing import Callable, Optional

# on_progress(stage_name, done, total); total may be 0 when unknown.
ProgressFn = Optional[Callable[[str, int, int], None]]
# on_step(done, total): called by a step loop (the engine's DDIM loop) after each step.
StepFn = Optional[Callable[[int, int], None]]


def report(fn: ProgressFn, stage: str, done: int, total: int) -> None:
    if fn is not None:
        fn(stage, done, total)


def batch_steps(fn: ProgressFn, stage: str, batch: int, n_batches: int) -> StepFn:
    """The ``on_step`` hook for batch ``batch`` (0-based) of ``n_batches`` batches of one step loop each: reports
    ``(stage, batch * steps + done, n_batches * steps)``, so one bar (with ETA) covers every step of the run.
    None when nobody listens (the loop then pays nothing)."""
    if fn is None:
        return None

    def on_step(done: int, total: int) -> None:
        fn(stage, batch * total + done, n_batches * total)

    return on_step

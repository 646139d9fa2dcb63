"""Progress reporting without UI imports: stages call a plain callback; the CLI renders it with rich on stderr."""
from __future__ import annotations

from typing import Callable, Optional

# on_progress(stage_name, done, total); total may be 0 when unknown.
ProgressFn = Optional[Callable[[str, int, int], None]]


def report(fn: ProgressFn, stage: str, done: int, total: int) -> None:
    if fn is not None:
        fn(stage, done, total)

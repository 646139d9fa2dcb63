"""``balance --shard auto``: the shard from the launcher, and the merge of the shard manifests.

Where the shard comes from (first match):

1. ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1 with ``RANK``, else ``LOCAL_RANK`` and
   ``LOCAL_WORLD_SIZE``): shard ``RANK + 1`` of ``WORLD_SIZE``, one process per GPU.
2. A Slurm job array (``SLURM_ARRAY_TASK_ID``): shard ``ID - MIN + 1`` of ``SLURM_ARRAY_TASK_COUNT`` (or
   ``MAX - MIN + 1`` when the count is not set). Arrays with a step (``--array=0-9:2``) are refused: their ids
   are not consecutive.
3. Neither: one shard (``1/1``), the plain single-process run.

With N > 1 every shard writes into its own folder ``OUT/shard-K-of-N/`` (each locked by its own process) and,
when it has finished, tries :func:`merge_when_complete`: under a file lock, once every shard folder holds a
*complete* run (``balance.json`` status ``complete`` and ``manifest.csv``), ``manifest.merge_manifests`` joins
them into ``OUT/manifest.csv`` (+ ``OUT/datalist.json``). Under torchrun the main process (rank 0) also waits
(polling the shard records) until the merge is written, so its exit means the dataset is whole; a shard that
ends partial stops the wait (rerun it; the merge happens then). Slurm array tasks never wait: whichever task
finishes last merges. Nothing here imports torch, so no process group is needed.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..errors import UsageError

log = logging.getLogger("medsoft_aug.generate.scaleout")

MERGE_LOCK = ".merge.lock"


@dataclass(frozen=True)
class AutoShard:
    k: int               # 1-based shard
    n: int               # number of shards
    launcher: str        # "torch", "slurm" or "none"

    @property
    def spec(self) -> str:
        return f"{self.k}/{self.n}"


def _int(env: Mapping[str, str], name: str) -> Optional[int]:
    v = env.get(name, "")
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise UsageError(f"--shard auto: environment variable {name}={v!r} is not an integer") from None


def resolve_shard(env: Optional[Mapping[str, str]] = None) -> AutoShard:
    """The shard of this process from the launcher's environment (see the module docstring)."""
    env = os.environ if env is None else env
    world = _int(env, "WORLD_SIZE")
    rank = _int(env, "RANK")
    if world is None and _int(env, "LOCAL_WORLD_SIZE") is not None:
        world, rank = _int(env, "LOCAL_WORLD_SIZE"), _int(env, "LOCAL_RANK")
    if world is not None and world > 1:
        rank = _int(env, "LOCAL_RANK") if rank is None else rank
        if rank is None or not 0 <= rank < world:
            raise UsageError(f"--shard auto: rank {rank} is not in 0..{world - 1} (WORLD_SIZE={world})")
        return AutoShard(rank + 1, world, "torch")
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    if task is not None:
        lo, hi, count = (_int(env, f"SLURM_ARRAY_TASK_{x}") for x in ("MIN", "MAX", "COUNT"))
        lo = 0 if lo is None else lo
        if count is None:
            if hi is None:
                raise UsageError("--shard auto: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT "
                                 "nor SLURM_ARRAY_TASK_MAX")
            count = hi - lo + 1
        if _int(env, "SLURM_ARRAY_TASK_STEP") not in (None, 1) or (hi is not None and hi - lo + 1 != count):
            raise UsageError("--shard auto: the Slurm array's task ids are not consecutive (use --array=A-B "
                             "without a step, or --shard K/N)")
        if not 0 <= task - lo < count:
            raise UsageError(f"--shard auto: SLURM_ARRAY_TASK_ID={task} is outside {lo}..{lo + count - 1}")
        return AutoShard(task - lo + 1, count, "slurm")
    return AutoShard(1, 1, "none")


def shard_dir(out: Path, k: int, n: int) -> Path:
    """Where shard K of N writes under OUT (OUT itself for a single shard)."""
    return out if n == 1 else out / f"shard-{k}-of-{n}"


def _shard_status(folder: Path) -> str:
    try:
        return str(json.loads((folder / "balance.json").read_text()).get("status", ""))
    except (OSError, ValueError):
        return ""


def merge_when_complete(out: Path, n: int) -> Optional[dict]:
    """Merge the N shard manifests into ``OUT/manifest.csv`` if every shard is complete; else None."""
    from filelock import FileLock

    from ..manifest import merge_manifests

    dirs = [shard_dir(out, k, n) for k in range(1, n + 1)]
    with FileLock(str(out / MERGE_LOCK), thread_local=False):
        if not all(_shard_status(d) == "complete" and (d / "manifest.csv").is_file() for d in dirs):
            return None
        return merge_manifests([d / "manifest.csv" for d in dirs], out / "manifest.csv").to_dict()


def finish_shard(out: Path, auto: AutoShard, poll_s: float = 1.0) -> Optional[dict]:
    """After shard ``auto`` finished: try the merge; the torchrun main process waits until it is done.

    Returns the merge result, or None (other shards still running, or one of them ended partial)."""
    merged = merge_when_complete(out, auto.n)
    if merged is not None or not (auto.launcher == "torch" and auto.k == 1):
        return merged
    log.info("shard %s done; waiting for the other shards to merge the manifests", auto.spec)
    while merged is None:
        states = [_shard_status(shard_dir(out, k, auto.n)) for k in range(1, auto.n + 1)]
        if "partial" in states:
            log.warning("a shard ended partial: manifests not merged (rerun it, then the merge is done)")
            return None
        time.sleep(poll_s)
        merged = merge_when_complete(out, auto.n)
    return merged


def parse_shard(spec: Optional[str]) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) -> (K, N); None -> (1, 1)."""
    if spec is None or spec == "":
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise UsageError(f"--shard must be K/N with 1 <= K <= N, got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def shard_items(items: Sequence[Any], k: int, n: int) -> list[Any]:
    """Deterministic share K of N: every N-th item of the plan starting at K-1 (classes stay mixed per shard)."""
    return [it for i, it in enumerate(items) if i % n == k - 1]

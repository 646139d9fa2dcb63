"""The balancing plan: per-class deficits in the training split -> a list of synthetic samples to make (pure).

For a target ratio ``r`` each disease class ``c`` gets ``max(0, ceil(r * N_normal) - N_c)`` synthetic samples,
counted on the TRAIN split only (the meaning of a float ``sampling_strategy`` in imbalanced-learn, rounded up).
The product ``r * N_normal`` is computed exactly (decimal ``r``), so ``ceil(0.5 * 7) == 4`` and
``ceil(0.1 * 30) == 3`` without float error.

Donors are normal training samples with an ``ok`` soft mask. They are spread evenly: a seeded permutation of
the donor pool, used round-robin over the plan (every donor is used ``floor`` or ``ceil`` of the mean). When a
class's training rows all share one ``condition`` (RSNA 2024 layout) and normal donors of that condition exist,
the pool is restricted to them, so a stenosis is inpainted where a normal canal was labelled.

Prompts name the donor's level: ``{level}`` in a template, or the level a real description names, becomes the
donor's level (the soft mask sits there). Each planned sample has a stable id ``syn-{class}-{k:05d}`` and a seed derived from (run seed, id) by a hash, so
its result does not depend on batch size, sharding or restarts. Nothing here touches a model or the disk.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, UsageError

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class PlanItem:
    """One synthetic sample to generate."""

    sample_id: str      # syn-{class_slug}-{k:05d}
    label: str          # disease class
    k: int              # index within its class (0-based)
    donor_id: str       # normal training sample whose image and soft mask are used
    prompt: str         # lesion description (e_t for the MSC, text condition for the UNet)
    seed: int           # 63-bit seed derived from (run seed, sample_id)


@dataclass
class BalancePlan:
    normal_class: str
    ratio: float
    run_seed: int
    counts_before: dict[str, int]        # train-split counts per class, normal included
    target: dict[str, int]               # ceil(ratio * N_normal) per planned disease class
    to_generate: dict[str, int]          # per planned disease class
    counts_after: dict[str, int]         # counts_before + to_generate
    prompt_source: dict[str, str]        # class -> "file" | "descriptions"
    items: list[PlanItem] = field(default_factory=list)

    def donor_uses(self) -> dict[str, int]:
        uses: dict[str, int] = {}
        for it in self.items:
            uses[it.donor_id] = uses.get(it.donor_id, 0) + 1
        return uses

    def to_dict(self, with_items: bool = True) -> dict[str, Any]:
        """JSON-ready summary (the ``--dry-run`` document)."""
        prompts: dict[str, list[str]] = {}
        for it in self.items:
            lst = prompts.setdefault(it.label, [])
            if it.prompt not in lst:
                lst.append(it.prompt)
        d: dict[str, Any] = {
            "normal_class": self.normal_class, "ratio": self.ratio, "seed": self.run_seed,
            "counts_before": self.counts_before, "target": self.target, "to_generate": self.to_generate,
            "counts_after": self.counts_after, "total_to_generate": len(self.items),
            "donors": {"n_used": len(self.donor_uses()), "uses": self.donor_uses()},
            "prompt_source": self.prompt_source, "prompts": prompts,
        }
        if with_items:
            d["items"] = [asdict(it) for it in self.items]
        return d


def class_slug(label: str) -> str:
    """Filesystem-safe form of a class name (used in sample ids and prompt lookup)."""
    s = _SAFE.sub("_", str(label).strip()).strip("_")
    return s or "class"


def prompt_key(label: str) -> str:
    """Normalized key for matching class names in prompt files: lower case, runs of non-alphanumerics -> '_'."""
    return re.sub(r"[^a-z0-9]+", "_", str(label).lower()).strip("_")


def derive_seed(run_seed: int, sample_id: str) -> int:
    """63-bit seed from (run seed, sample id): stable across runs, machines, shards and batch sizes."""
    h = hashlib.sha256(f"medsoft-aug:{int(run_seed)}:{sample_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def n_to_generate(ratio: float, n_normal: int, n_class: int) -> int:
    """``max(0, ceil(ratio * n_normal) - n_class)`` with ``ratio`` taken as the decimal it prints as."""
    target = math.ceil(Fraction(repr(float(ratio))) * int(n_normal))
    return max(0, target - int(n_class))


def _fill_prompt(text: str, text_level: str, level: str) -> str:
    """Put the lesion at the donor's level (the soft mask is there).

    Templates may use ``{level}`` (filled from the donor's level, or 'the affected level' when unknown). A real
    description that names its own sample's level (``text_level``, e.g. "at L3/L4", "the L3 vertebral body") gets
    the donor's level instead.
    """
    if "{level}" in text:
        return text.replace("{level}", level or "the affected level")
    if text_level and level and text_level != level:
        pat = rf"(?<![A-Za-z0-9/]){re.escape(text_level)}(?![A-Za-z0-9/])"
        return re.sub(pat, level, text)
    return text


def plan_balance(
    index: pd.DataFrame,
    masks: pd.DataFrame,
    *,
    normal_class: str = "normal",
    ratio: float = 1.0,
    classes: Optional[Sequence[str]] = None,
    prompts: Optional[Mapping[str, Sequence[str]]] = None,
    prompt_mode: str = "auto",
    seed: int = 0,
) -> BalancePlan:
    """Plan the synthetic samples that bring each disease class to ``ratio`` times the normal class (train split).

    Args:
        index: ``WORK/index.csv`` as strings (columns of ``workdir.INDEX_COLUMNS``; at least sample_id, label,
            split; ``description``, ``condition``, ``level`` used when present).
        masks: ``WORK/masks.csv`` (sample_id, status, mask).
        normal_class: the majority class (from ``WORK/ingest.json``).
        ratio: r > 0; target per class = ceil(r * N_normal).
        classes: restrict to these disease classes (default: every non-normal class in the train split).
        prompts: class -> texts, keys matched with :func:`prompt_key` (from a prompts file or the shipped defaults).
        prompt_mode: ``auto`` (the class's real train-split descriptions if any, else ``prompts``),
            ``descriptions`` (real descriptions only), ``file`` (``prompts`` only).
        seed: run seed (donor permutation and per-sample seeds).

    Raises:
        UsageError: ratio <= 0, bad prompt_mode. InputError: no normal training samples, unknown class, no
        usable donor, no prompt for a class.
    """
    if not (ratio > 0 and math.isfinite(ratio)):
        raise UsageError(f"--target-ratio must be a positive number, got {ratio}")
    if prompt_mode not in ("auto", "descriptions", "file"):
        raise UsageError(f"prompt mode must be auto, descriptions or file, got {prompt_mode!r}")
    train = index[index["split"] == "train"]
    counts = train["label"].value_counts()
    counts_before = {str(k): int(v) for k, v in sorted(counts.items())}
    n_normal = counts_before.get(normal_class, 0)
    if n_normal == 0:
        raise InputError(f"no training samples of the normal class {normal_class!r}: nothing to balance against")

    if classes:
        known = set(index["label"]) | {k for k in (prompts or {})}
        known_keys = {prompt_key(k) for k in known}
        for c in classes:
            if c == normal_class:
                raise InputError(f"--classes names the normal class {c!r}")
            if c not in known and prompt_key(c) not in known_keys:
                raise InputError(f"unknown class {c!r}: not in index.csv nor in the prompts")
        planned = list(dict.fromkeys(classes))
    else:
        planned = [c for c in counts_before if c != normal_class]
    slugs = {c: class_slug(c) for c in planned}
    if len(set(slugs.values())) != len(slugs):
        raise InputError("two class names map to the same sample-id prefix: " + ", ".join(sorted(planned)))

    to_gen = {c: n_to_generate(ratio, n_normal, counts_before.get(c, 0)) for c in planned}
    target = {c: math.ceil(Fraction(repr(float(ratio))) * n_normal) for c in planned}

    # Donor pool: normal train samples with a usable soft mask, in sorted order, then a seeded permutation.
    ok = masks[(masks.get("status", "ok") == "ok") & (masks.get("mask", "x") != "")]
    ok_ids = set(ok["sample_id"])
    normals = train[(train["label"] == normal_class) & train["sample_id"].isin(ok_ids)].sort_values("sample_id")
    total = sum(to_gen.values())
    if total and normals.empty:
        raise InputError(f"no normal training sample of class {normal_class!r} has a usable soft mask "
                         "(masks.csv status ok): no donors")
    rng = np.random.default_rng(int(seed))
    cond = normals["condition"] if "condition" in normals.columns else pd.Series([""] * len(normals))
    level = dict(zip(normals["sample_id"], normals["level"] if "level" in normals.columns else [""] * len(normals)))
    order = list(normals["sample_id"].to_numpy()[rng.permutation(len(normals))]) if len(normals) else []
    cond_of = dict(zip(normals["sample_id"], cond))
    pools: dict[str, list[str]] = {"": order}
    cursor: dict[str, int] = {}

    items: list[PlanItem] = []
    sources: dict[str, str] = {}
    pkeys = {prompt_key(k): list(v) for k, v in (prompts or {}).items()}
    for c in planned:
        n = to_gen[c]
        rows = train[train["label"] == c]
        descs = sorted({(str(d).strip(), str(lv)) for d, lv in zip(rows.get("description", pd.Series(dtype=str)),
                                                                   rows.get("level", pd.Series(dtype=str)))
                        if str(d).strip()})
        if prompt_mode == "descriptions" or (prompt_mode == "auto" and descs):
            texts, sources[c] = descs, "descriptions"
        else:
            texts, sources[c] = [(t, "") for t in pkeys.get(prompt_key(c), [])], "file"
        if n and not texts:
            raise InputError(f"no prompt for class {c!r}: no lesion descriptions in the train split and none in "
                             "the prompts file (give --prompts FILE)")
        conds = {str(x) for x in rows.get("condition", pd.Series(dtype=str))}
        pool_key = ""
        if len(conds) == 1 and next(iter(conds)):
            only = next(iter(conds))
            if only not in pools:
                pools[only] = [d for d in order if cond_of.get(d, "") == only]
            if pools[only]:
                pool_key = only
        pool = pools[pool_key]
        for k in range(n):
            j = cursor.get(pool_key, 0)
            cursor[pool_key] = j + 1
            donor = pool[j % len(pool)]
            sid = f"syn-{slugs[c]}-{k:05d}"
            text = _fill_prompt(*texts[k % len(texts)], str(level.get(donor, "")))
            items.append(PlanItem(sid, c, k, str(donor), text, derive_seed(seed, sid)))

    counts_after = dict(counts_before)
    for c, n in to_gen.items():
        counts_after[c] = counts_after.get(c, 0) + n
    return BalancePlan(normal_class=normal_class, ratio=float(ratio), run_seed=int(seed),
                       counts_before=counts_before, target=target, to_generate=to_gen, counts_after=counts_after,
                       prompt_source=sources, items=items)


def parse_shard(spec: Optional[str]) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) -> (K, N); None -> (1, 1)."""
    if spec is None or spec == "":
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise UsageError(f"--shard must be K/N with 1 <= K <= N, got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def shard_items(items: Sequence[PlanItem], k: int, n: int) -> list[PlanItem]:
    """Deterministic share K of N: every N-th item of the plan starting at K-1 (classes stay mixed per shard)."""
    return [it for i, it in enumerate(items) if i % n == k - 1]

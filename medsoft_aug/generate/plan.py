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

Size: the counts come first (O(classes) memory) and the items are streamed (:meth:`BalancePlan.iter_items`), so a
plan larger than ``max_synthetic`` (default ``MAX_PLAN_FACTOR`` = 100x the train split) is refused before anything
is built. ``--classes`` must name classes that have real training samples; a near match (case, punctuation, a typo)
is suggested. DICOM output needs DICOM donors: with ``output_format="dicom"`` the donor pool keeps only donors
ingested from DICOM (the excluded ones are counted in the plan); none left is an InputError before any model loads.
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import math
import re
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, UsageError

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_PLAN_FACTOR = 100                          # default limit: synthetic samples per training sample
DICOM_SOURCES = ("dicom", "dicom-series")      # index.csv source_format values a DICOM output can be built from
NEGATIVE_MODES = ("none", "other-classes")     # --negative-prompts


@dataclass(frozen=True)
class PlanItem:
    """One synthetic sample to generate."""

    sample_id: str      # syn-{class_slug}-{k:05d}
    label: str          # disease class
    k: int              # index within its class (0-based)
    donor_id: str       # normal training sample whose image and soft mask are used
    prompt: str         # lesion description (e_t for the MSC, text condition for the UNet)
    seed: int           # 63-bit seed derived from (run seed, sample_id)
    negative_prompt: str = ""   # the CFG negative (--negative-prompts other-classes); "" = the empty text


@dataclass(frozen=True)
class ClassPlan:
    """How one class's items are made: item k uses ``texts[k % len(texts)]`` and donor
    ``pools[pool][(start + k) % len(pool)]`` (the round-robin cursor of its pool continues across classes)."""

    label: str
    slug: str
    n: int
    texts: tuple[tuple[str, str], ...]      # (text, the level the text names or "")
    pool: str                               # key into BalancePlan.pools ("" = every donor)
    start: int
    negatives: tuple[tuple[str, str], ...] = ()    # CFG negatives (other classes' texts, interleaved) or ()


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
    output_format: str = "png"
    classes: list[ClassPlan] = field(default_factory=list)
    pools: dict[str, list[str]] = field(default_factory=dict, repr=False)    # donor ids, permuted
    levels: dict[str, str] = field(default_factory=dict, repr=False)         # donor id -> level
    donor_pool: dict[str, Any] = field(default_factory=dict)   # eligible / pool sizes, excluded donors by format
    negative_prompts: str = "none"       # NEGATIVE_MODES

    @property
    def total(self) -> int:
        return sum(c.n for c in self.classes)

    def iter_items(self, k: int = 1, n: int = 1) -> Iterator[PlanItem]:
        """The items in plan order (class by class), only every n-th from k-1 (shard K of N); built lazily."""
        i = 0
        for c in self.classes:
            for j in range(c.n):
                if i % n == k - 1:
                    yield self._item(c, j)
                i += 1

    @property
    def items(self) -> list[PlanItem]:
        """Every item as a list (bounded: the plan was checked against ``max_synthetic``)."""
        return list(self.iter_items())

    def _item(self, c: ClassPlan, j: int) -> PlanItem:
        pool = self.pools[c.pool]
        donor = pool[(c.start + j) % len(pool)]
        sid = f"syn-{c.slug}-{j:05d}"
        level = self.levels.get(donor, "")
        text = _fill_prompt(*c.texts[j % len(c.texts)], level)
        negative = _fill_prompt(*c.negatives[j % len(c.negatives)], level) if c.negatives else ""
        return PlanItem(sid, c.label, j, donor, text, derive_seed(self.run_seed, sid), negative)

    def donor_uses(self) -> dict[str, int]:
        """Donor id -> number of items using it, by arithmetic over the round-robin cursors (O(donors))."""
        per_pool: dict[str, int] = {}
        for c in self.classes:
            per_pool[c.pool] = max(per_pool.get(c.pool, 0), c.start + c.n)
        uses: dict[str, int] = {}
        for key, total in per_pool.items():
            pool = self.pools[key]
            q, r = divmod(total, len(pool))
            for i, d in enumerate(pool):
                if q + (i < r):
                    uses[d] = uses.get(d, 0) + q + (i < r)
        return uses

    def prompts(self) -> dict[str, list[str]]:
        """Distinct prompts per class in order of first use (one period of (text, donor) pairs is enough)."""
        out: dict[str, list[str]] = {}
        for c in self.classes:
            seen: dict[str, None] = {}
            for j in range(min(c.n, len(c.texts) * len(self.pools[c.pool]))):
                seen.setdefault(self._item(c, j).prompt, None)
            if seen:
                out[c.label] = list(seen)
        return out

    def to_dict(self, with_items: bool = True) -> dict[str, Any]:
        """JSON-ready summary (the ``--dry-run`` document)."""
        uses = self.donor_uses()
        d: dict[str, Any] = {
            "normal_class": self.normal_class, "ratio": self.ratio, "seed": self.run_seed,
            "counts_before": self.counts_before, "target": self.target, "to_generate": self.to_generate,
            "counts_after": self.counts_after, "total_to_generate": self.total, "output_format": self.output_format,
            "donors": {"n_used": len(uses), "uses": uses, **self.donor_pool},
            "prompt_source": self.prompt_source, "prompts": self.prompts(), "negative_prompts": self.negative_prompts,
        }
        if with_items:
            d["items"] = [asdict(it) for it in self.iter_items()]
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
    max_synthetic: Optional[int] = None,
    output_format: str = "png",
    negative_prompts: str = "none",
) -> BalancePlan:
    """Plan the synthetic samples that bring each disease class to ``ratio`` times the normal class (train split).

    Args:
        index: ``WORK/index.csv`` as strings (columns of ``workdir.INDEX_COLUMNS``; at least sample_id, label,
            split; ``description``, ``condition``, ``level``, ``source_format`` used when present).
        masks: ``WORK/masks.csv`` (sample_id, status, mask).
        normal_class: the majority class (from ``WORK/ingest.json``).
        ratio: r > 0; target per class = ceil(r * N_normal).
        classes: restrict to these disease classes (default: every non-normal class in the train split); each
            must have real training samples.
        prompts: class -> texts, keys matched with :func:`prompt_key` (from a prompts file or the shipped defaults).
        prompt_mode: ``auto`` (the class's real train-split descriptions if any, else ``prompts``),
            ``descriptions`` (real descriptions only), ``file`` (``prompts`` only).
        seed: run seed (donor permutation and per-sample seeds).
        max_synthetic: most synthetic samples allowed (default ``MAX_PLAN_FACTOR`` x the train split).
        output_format: ``dicom`` keeps only DICOM donors in the pool.
        negative_prompts: ``none`` (classifier-free guidance against the empty text, the paper's) or
            ``other-classes``: item k of a class is guided away from the k-th of the other disease classes' texts
            (interleaved class by class, the same source rule as the class's own texts, at the donor's level), as
            diffusers' ``negative_prompt``; see :func:`_negatives`.

    Raises UsageError (ratio <= 0, bad prompt_mode, a plan above ``max_synthetic``) or InputError (no normal
    training samples, a class without training samples, no usable donor, no prompt for a class).
    """
    # 1. options and train-split counts (O(classes))
    if not (ratio > 0 and math.isfinite(ratio)):
        raise UsageError(f"--target-ratio must be a positive number, got {ratio}")
    if prompt_mode not in ("auto", "descriptions", "file"):
        raise UsageError(f"prompt mode must be auto, descriptions or file, got {prompt_mode!r}")
    if negative_prompts not in NEGATIVE_MODES:
        raise UsageError(f"--negative-prompts must be one of {', '.join(NEGATIVE_MODES)}, got {negative_prompts!r}")
    train = index[index["split"] == "train"]
    counts_before = {str(k): int(v) for k, v in sorted(train["label"].value_counts().items())}
    n_normal = counts_before.get(normal_class, 0)
    if n_normal == 0:
        raise InputError(f"no training samples of the normal class {normal_class!r}: nothing to balance against")
    # 2. planned classes and their sizes; refuse an outsized plan before building anything
    planned = _planned_classes(classes, counts_before, normal_class, index)
    target = {c: math.ceil(Fraction(repr(float(ratio))) * n_normal) for c in planned}
    to_gen = {c: n_to_generate(ratio, n_normal, counts_before.get(c, 0)) for c in planned}
    _check_size(sum(to_gen.values()), len(train), max_synthetic)
    # 3. donor pool (normal train samples with an ok mask, seeded permutation); per-class texts and pools
    order, pool_info = _donor_order(train, masks, normal_class, output_format, seed, sum(to_gen.values()))
    normals = train.set_index("sample_id", drop=False).loc[order] if order else train.iloc[:0]
    pools: dict[str, list[str]] = {"": order}
    specs, sources = _class_plans(train, planned, to_gen, prompts, prompt_mode, pools,
                                  dict(zip(order, _column(normals, "condition"))))
    if negative_prompts == "other-classes":
        specs = _negatives(specs, train, normal_class, prompts, prompt_mode)
    counts_after = {**counts_before, **{c: counts_before[c] + n for c, n in to_gen.items()}}
    return BalancePlan(normal_class=normal_class, ratio=float(ratio), run_seed=int(seed),
                       counts_before=counts_before, target=target, to_generate=to_gen,
                       counts_after=counts_after, prompt_source=sources, output_format=output_format,
                       classes=specs, pools=pools, levels=dict(zip(order, _column(normals, "level"))),
                       donor_pool=pool_info, negative_prompts=negative_prompts)


def _negatives(specs: list[ClassPlan], train: pd.DataFrame, normal_class: str,
               prompts: Optional[Mapping[str, Sequence[str]]], prompt_mode: str) -> list[ClassPlan]:
    """Each planned class's CFG negatives: the texts of every other disease class of the train split (planned or
    not; taken as its own texts would be, ``_class_texts``), interleaved class by class (first text of each
    class, then the second, ...). A class to generate with no other class to contrast with is refused."""
    diseases = [str(c) for c in sorted(set(train["label"])) if c != normal_class]
    texts = {c: _class_texts(c, train[train["label"] == c], prompts, prompt_mode)[0] for c in diseases}
    out = []
    for spec in specs:
        groups = [texts[c] for c in diseases if c != spec.label and texts[c]]
        neg = tuple(t for row in itertools.zip_longest(*groups) for t in row if t is not None)
        if spec.n and not neg:
            raise UsageError(f"--negative-prompts other-classes: class {spec.label!r} has no other disease class "
                             "with a description or prompt to guide away from; use --negative-prompts none")
        out.append(replace(spec, negatives=neg))
    return out


def _class_plans(train: pd.DataFrame, planned: list[str], to_gen: dict[str, int],
                 prompts: Optional[Mapping[str, Sequence[str]]], prompt_mode: str, pools: dict[str, list[str]],
                 cond_of: dict[str, str]) -> tuple[list[ClassPlan], dict[str, str]]:
    """One ClassPlan per planned class (texts, pool, cursor start) and where its prompts come from."""
    specs, sources, cursor = [], {}, {}
    for c in planned:
        rows = train[train["label"] == c]
        texts, sources[c] = _class_texts(c, rows, prompts, prompt_mode)
        if to_gen[c] and not texts:
            raise InputError(f"no prompt for class {c!r}: no lesion descriptions in the train split and none in "
                             "the prompts file (give --prompts FILE)")
        key = _pool_key(rows, pools[""], cond_of, pools)
        specs.append(ClassPlan(c, class_slug(c), to_gen[c], tuple(texts), key, cursor.get(key, 0)))
        cursor[key] = cursor.get(key, 0) + to_gen[c]
    return specs, sources


def _column(df: pd.DataFrame, name: str) -> list[str]:
    return [str(v) for v in df[name]] if name in df.columns else [""] * len(df)


def _near_match(name: str, known: Sequence[str]) -> Optional[str]:
    """The known class ``name`` most likely means: same key (case, punctuation), else the closest spelling."""
    by_key = {prompt_key(k): k for k in known}
    if prompt_key(name) in by_key:
        return by_key[prompt_key(name)]
    close = difflib.get_close_matches(prompt_key(name), list(by_key), n=1, cutoff=0.6)
    return by_key[close[0]] if close else None


def _planned_classes(classes: Optional[Sequence[str]], counts: dict[str, int], normal_class: str,
                     index: pd.DataFrame) -> list[str]:
    """The disease classes to balance; a named class must have real training samples (else a near match)."""
    diseases = [c for c in counts if c != normal_class]
    if not classes:
        return diseases
    for c in classes:
        if c == normal_class:
            raise InputError(f"--classes names the normal class {c!r}")
        if counts.get(c, 0) > 0:
            continue
        near = _near_match(c, diseases)
        hint = f"did you mean {near!r}? " if near else ""
        where = " (it has only val/test samples)" if c in set(index["label"]) else ""
        listed = ", ".join(diseases[:10]) + (" ..." if len(diseases) > 10 else "")
        raise InputError(f"--classes {c!r}: no real training sample has this class{where}; {hint}"
                         f"classes in the train split: {listed or 'none'}")
    return list(dict.fromkeys(classes))


def _check_size(total: int, n_train: int, max_synthetic: Optional[int]) -> None:
    if max_synthetic is not None and int(max_synthetic) < 0:
        raise UsageError(f"--max-synthetic must be >= 0, got {max_synthetic}")
    limit = MAX_PLAN_FACTOR * n_train if max_synthetic is None else int(max_synthetic)
    if total <= limit:
        return
    why = (f"more than {MAX_PLAN_FACTOR}x the {n_train} training samples" if max_synthetic is None
           else f"more than --max-synthetic {limit}")
    raise UsageError(f"the plan would generate {total} synthetic samples, {why}: lower --target-ratio, "
                     f"or allow it with --max-synthetic {total}")


def _donor_order(train: pd.DataFrame, masks: pd.DataFrame, normal_class: str, output_format: str, seed: int,
                 total: int) -> tuple[list[str], dict[str, Any]]:
    """Normal train samples with a usable soft mask (only DICOM ones for DICOM output), sorted, then permuted."""
    ok = masks[(masks.get("status", "ok") == "ok") & (masks.get("mask", "x") != "")]
    normals = train[(train["label"] == normal_class) & train["sample_id"].isin(set(ok["sample_id"]))]
    normals = normals.sort_values("sample_id")
    info: dict[str, Any] = {"eligible": len(normals)}
    if output_format == "dicom":
        fmt = pd.Series(_column(normals, "source_format"), index=normals.index)
        bad = fmt[~fmt.isin(DICOM_SOURCES)]
        info["excluded_not_dicom"] = {str(k or "unknown"): int(v) for k, v in sorted(bad.value_counts().items())}
        normals = normals[fmt.isin(DICOM_SOURCES)]
        if total and normals.empty and info["eligible"]:
            kinds = ", ".join(f"{k}: {v}" for k, v in info["excluded_not_dicom"].items())
            raise InputError(f"--output-format dicom needs DICOM donors, but none of the {info['eligible']} normal "
                             f"training samples with a usable mask comes from DICOM ({kinds}): choose "
                             "--output-format png or nifti")
    info["pool"] = len(normals)
    if total and normals.empty:
        raise InputError(f"no normal training sample of class {normal_class!r} has a usable soft mask "
                         "(masks.csv status ok): no donors")
    rng = np.random.default_rng(int(seed))
    ids = normals["sample_id"].to_numpy()
    return [str(s) for s in ids[rng.permutation(len(ids))]], info


def _class_texts(c: str, rows: pd.DataFrame, prompts: Optional[Mapping[str, Sequence[str]]],
                 prompt_mode: str) -> tuple[list[tuple[str, str]], str]:
    """(texts, source): the class's real train-split descriptions (with their level) or the prompts file's."""
    descs = sorted({(d.strip(), lv) for d, lv in zip(_column(rows, "description"), _column(rows, "level"))
                    if d.strip()})
    if prompt_mode == "descriptions" or (prompt_mode == "auto" and descs):
        return descs, "descriptions"
    pkeys = {prompt_key(k): list(v) for k, v in (prompts or {}).items()}
    return [(t, "") for t in pkeys.get(prompt_key(c), [])], "file"


def _pool_key(rows: pd.DataFrame, order: list[str], cond_of: dict[str, str], pools: dict[str, list[str]]) -> str:
    """A class whose rows all share one condition draws from the normal donors of that condition, when any."""
    conds = set(_column(rows, "condition"))
    if len(conds) != 1 or not next(iter(conds)):
        return ""
    only = next(iter(conds))
    if only not in pools:
        pools[only] = [d for d in order if cond_of.get(d, "") == only]
    return only if pools[only] else ""

"""Deterministic, patient-level, class-stratified train/val/test splits.

Algorithm (no random state; depends only on ``seed``, the patient ids and their labels):

1. Each patient gets a stratum: the rarest class among its samples (rarity = number of patients having the
   class; ties broken by class name), so every diseased class is spread over the splits.
2. Patients are listed stratum by stratum (rarest first), ordered inside a stratum by
   ``sha256(f"{seed}:{patient_id}")``.
3. Systematic sampling along that list: ``round(N * test_fraction)`` patients go to ``test`` at evenly spaced
   positions, then ``round(N * (test_fraction + val_fraction)) - n_test`` of the rest to ``val`` the same way,
   the others to ``train``. Totals are exact and each stratum gets its share within one patient, even when
   strata are tiny. A patient is in exactly one split, so no patient is on both sides.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from typing import Iterable, Mapping

from ..errors import UsageError

SPLITS = ("train", "val", "test")


def check_fractions(test_fraction: float, val_fraction: float) -> None:
    """UsageError unless 0 <= test, val and test + val < 1."""
    for name, f in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not (0.0 <= f < 1.0):
            raise UsageError(f"{name} must be in [0, 1), got {f}")
    if test_fraction + val_fraction >= 1.0:
        raise UsageError(f"test_fraction + val_fraction must be < 1, got {test_fraction + val_fraction}")


def _key(seed: int, patient_id: str) -> str:
    return hashlib.sha256(f"{seed}:{patient_id}".encode("utf-8")).hexdigest()


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def systematic(n: int, k: int) -> list[bool]:
    """``k`` of ``n`` positions, evenly spaced: position p is chosen when floor((p+1)k/n + 1/2) steps up."""
    if n == 0:
        return []
    return [((p + 1) * k * 2 + n) // (2 * n) > (p * k * 2 + n) // (2 * n) for p in range(n)]


def assign_splits(patient_labels: Mapping[str, Iterable[str]], *, test_fraction: float = 0.2,
                  val_fraction: float = 0.0, seed: int = 0) -> dict[str, str]:
    """Map each patient id to ``train`` / ``val`` / ``test``.

    Args:
        patient_labels: patient id -> the class labels of that patient's samples.
        test_fraction, val_fraction: fraction of patients in test / val (overall; per stratum within one).
        seed: split seed; the same seed and inputs always give the same split, whatever the input order.
    """
    check_fractions(test_fraction, val_fraction)
    labels = {str(p): set(ls) for p, ls in patient_labels.items()}
    rarity = Counter(c for ls in labels.values() for c in ls)
    strata: dict[tuple, list[str]] = defaultdict(list)
    for p, ls in labels.items():
        c = min(ls, key=lambda c: (rarity[c], c)) if ls else ""
        strata[(rarity[c] if ls else 0, c)].append(p)
    ordered = [p for s in sorted(strata) for p in sorted(strata[s], key=lambda p: (_key(seed, p), p))]
    n = len(ordered)
    n_test = _round_half_up(n * test_fraction)
    n_val = _round_half_up(n * (test_fraction + val_fraction)) - n_test
    is_test = systematic(n, n_test)
    rest = [p for p, t in zip(ordered, is_test) if not t]
    is_val = dict(zip(rest, systematic(len(rest), n_val)))
    return {p: "test" if t else ("val" if is_val[p] else "train") for p, t in zip(ordered, is_test)}

"""Post-selection for ``balance --candidates K``: score every candidate of a planned sample, keep the best.

Candidates: candidate 0 of a planned sample uses the sample's own seed (so K = 1 is plain balancing); candidate
j > 0 uses ``candidate_seed(seed, j)``, a hash of (seed, j). Each candidate is inpainted with its own generator,
so its image does not depend on the batch it shares, and neither does the choice.

References (read once per run, training split only, never val/test rows): every class's real training samples
with their soft masks, at most ``MAX_REFERENCES`` per class (first by sample_id). From them come the class means
inside the mask (the reference of ``generate.evidence``) and, for the scorers, encoder features.

Feature of an image: the frozen medical encoder's image feature (``MedicalEncoder.image_embed``, unit length) of
a square crop around its soft mask (the vertebra, with a margin), resized to ``CROP_PX``: the lesion fills a
crop, not a whole slice.

Scorers (``--scorer``):
  * ``feature`` (needs no labels beyond the training split's classes): ``cos(f, mu_class) - cos(f, mu_normal)``,
    mu = mean feature of the class's (the normal class's) real training samples: > 0 when the candidate looks
    more like the class's real lesions than like normal vertebrae;
  * ``classifier``: a logistic regression (scikit-learn, standardized inputs, balanced class weights) fitted on
    the real training samples of all classes, on first-order intensity statistics inside the soft mask
    (``first_order``: weighted mean, and std and 5/25/50/75/95th percentiles over the mask core, as radiomics'
    first-order features); the score is the probability of the target class. It needs no encoder, so it works
    the same with a real or a tiny model. (With the tiny preset's randomly initialised encoder the ``feature``
    score hardly separates lesions from their donors: measured in bench/RESULTS.md.)
A candidate whose score is below the floor (``--min-score``) is never kept; a planned sample none of whose
candidates passes is reported as failed. Scores are rounded to ``SCORE_DECIMALS`` before comparison (ties: the
lower candidate index), so float noise between batch layouts cannot flip a choice.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..fsutil import load_npy
from .evidence import masked_mean

log = logging.getLogger("medsoft_aug.generate.select")

SCORERS = ("feature", "classifier")
MAX_REFERENCES = 256
CROP_PX = 64
SCORE_DECIMALS = 4


def candidate_seed(seed: int, j: int) -> int:
    """Seed of candidate ``j`` of a planned sample whose seed is ``seed`` (``j = 0``: the seed itself)."""
    if j == 0:
        return int(seed)
    return int(hashlib.sha256(f"{int(seed)}/candidate/{int(j)}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def lesion_crop(image: np.ndarray, mask: np.ndarray, size: int = CROP_PX, margin: float = 0.25) -> torch.Tensor:
    """(1, 1, size, size) crop of ``image`` (H, W) centred on the soft mask's box (M_b > 0.05), its longer side
    plus ``margin`` of it on each side, clipped to the slice, resized bilinearly (antialiased)."""
    ys, xs = np.nonzero(np.asarray(mask) > 0.05)
    if len(ys):
        cy, cx = (ys.min() + ys.max()) / 2.0, (xs.min() + xs.max()) / 2.0
        half = max(ys.max() - ys.min(), xs.max() - xs.min(), 4) * (0.5 + margin)
        y0, x0 = int(max(0, round(cy - half))), int(max(0, round(cx - half)))
        y1 = int(min(image.shape[0], round(cy + half) + 1))
        x1 = int(min(image.shape[1], round(cx + half) + 1))
        image = image[y0:y1, x0:x1]
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


@dataclass
class References:
    """Real training samples per class: (image, soft mask) arrays at their native grids, and the class means."""

    samples: dict[str, list[tuple[np.ndarray, np.ndarray]]]
    ids: dict[str, list[str]]
    normal_class: str

    @property
    def means(self) -> dict[str, float]:
        """Mean inside the soft mask over the class's real training samples (``evidence`` reference)."""
        return {c: float(np.mean([masked_mean(i, m) for i, m in s])) for c, s in self.samples.items() if s}


def load_references(work: Path, index: pd.DataFrame, masks: pd.DataFrame, normal_class: str,
                    limit: int = MAX_REFERENCES) -> References:
    """The training split's samples with an ok soft mask, per class (see module docstring)."""
    status = masks["status"] if "status" in masks.columns else pd.Series("ok", index=masks.index)
    ok = masks[(masks["mask"] != "") & (status == "ok")].drop_duplicates("sample_id")
    mask_of = dict(zip(ok["sample_id"], ok["mask"]))
    train = index[(index["split"] == "train") & index["sample_id"].isin(mask_of)].sort_values("sample_id")
    samples: dict[str, list] = {}
    ids: dict[str, list[str]] = {}
    for label, grp in train.groupby("label", sort=True):
        for sid, rel in zip(grp["sample_id"][:limit], grp["image"][:limit]):
            try:
                img, msk = load_npy(work / rel), load_npy(work / mask_of[sid])
            except (OSError, ValueError) as e:
                raise InputError(f"{sid}: cannot read its slice or soft mask ({type(e).__name__})") from e
            samples.setdefault(str(label), []).append((np.clip(img, 0, 1), np.clip(msk, 0, 1)))
            ids.setdefault(str(label), []).append(str(sid))
    return References(samples, ids, normal_class)


class Scorer:
    """Scores images of a target class against the references (module docstring). ``encoder``: a
    ``models.encoders.MedicalEncoder`` (the MODEL_DIR's frozen encoder); reference features are computed once."""

    def __init__(self, kind: str, encoder: Any, refs: References, floor: Optional[float] = None,
                 batch: int = 32):
        if kind not in SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {kind!r}")
        if refs.normal_class not in refs.samples:
            raise InputError(f"the training split has no {refs.normal_class!r} samples with a mask to score "
                             "candidates against")
        self.kind, self.encoder, self.batch = kind, encoder, batch
        self.floor = (0.0 if kind == "feature" else 0.5) if floor is None else float(floor)
        self.normal = refs.normal_class
        feats = {c: self.features([i for i, _ in s], [m for _, m in s]) for c, s in refs.samples.items()}
        self.counts = {c: len(f) for c, f in feats.items()}
        self.centroids = {c: _unit(f.mean(axis=0)) for c, f in feats.items()} if kind == "feature" else {}
        self.model = None
        if kind == "classifier":
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            x = np.concatenate([feats[c] for c in sorted(feats)])
            y = np.concatenate([[c] * len(feats[c]) for c in sorted(feats)])
            self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced"))
            self.model.fit(x, y)

    @torch.no_grad()
    def features(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float64: unit-length encoder features of the crops around the masks (``feature``), or the
        first-order statistics inside the masks (``classifier``)."""
        if self.kind == "classifier":
            return np.stack([first_order(im, m) for im, m in zip(images, masks)]) if len(images) else \
                np.zeros((0, 7))
        out = []
        for i in range(0, len(images), self.batch):
            crops = torch.cat([lesion_crop(im, m) for im, m in zip(images[i:i + self.batch],
                                                                  masks[i:i + self.batch])])
            out.append(self.encoder.image_embed(crops).float().cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, 1))

    def score(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], labels: Sequence[str]) -> list[float]:
        """One score per image for its target class (rounded to ``SCORE_DECIMALS``)."""
        f = self.features(images, masks)
        if self.kind == "feature":
            raw = [float(v @ self._centroid(c) - v @ self.centroids[self.normal]) for v, c in zip(f, labels)]
        else:
            proba = self.model.predict_proba(f)
            col = {c: k for k, c in enumerate(self.model.classes_)}
            for c in set(labels) - set(col):
                self._centroid(c)                                   # raises: no real sample of that class
            raw = [float(p[col[c]]) if c in col else 0.0 for p, c in zip(proba, labels)]
        return [round(s, SCORE_DECIMALS) for s in raw]

    def _centroid(self, label: str) -> np.ndarray:
        if label not in self.counts:
            raise InputError(f"no real training sample of class {label!r} to score its candidates against")
        return self.centroids[label]

    def describe(self) -> dict[str, Any]:
        out = {"scorer": self.kind, "floor": self.floor, "references": self.counts}
        if self.kind == "feature":
            out.update(crop_px=CROP_PX, encoder=getattr(self.encoder, "ref", ""))
        else:
            out.update(features="first-order intensity statistics inside the soft mask",
                       model="StandardScaler + LogisticRegression(class_weight=balanced)")
        return out


def first_order(image: np.ndarray, mask: np.ndarray, core: float = 0.5) -> np.ndarray:
    """(7,) first-order intensity statistics of ``image`` inside the soft mask ``mask`` (both (H, W)): the
    mask-weighted mean, then std and 5/25/50/75/95th percentiles over the core (M_b >= core; the whole mask
    weighted > 0 when the core is empty)."""
    img, m = np.asarray(image, np.float64), np.asarray(mask, np.float64)
    mean = masked_mean(img, m)
    vals = img[m >= core] if (m >= core).any() else img[m > 0]
    if not vals.size:
        return np.zeros(7)
    return np.array([mean, vals.std(), *np.quantile(vals, [0.05, 0.25, 0.5, 0.75, 0.95])])


def choose(scores: Sequence[float], floor: float) -> Optional[int]:
    """Index of the best score at or above ``floor`` (ties: the lowest index), or None when none passes."""
    best = None
    for j, s in enumerate(scores):
        if s >= floor and (best is None or s > scores[best]):
            best = j
    return best


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


@dataclass
class Pick:
    """The outcome for one planned sample: the chosen candidate (None: none reached the floor), every
    candidate's score, and the chosen image's evidence and manifest fields."""

    chosen: Optional[int]
    scores: list[Optional[float]]
    fields: dict[str, str]


class Picker:
    """Per planned sample: score its K candidates (when a scorer is set), choose, and compute the evidence of
    the kept image (``generate.evidence``) against the class's real training lesions."""

    def __init__(self, refs: References, k: int = 1, scorer: Optional[Scorer] = None):
        self.refs_means, self.k, self.scorer = refs.means, int(k), scorer
        self.rejected = 0                      # planned samples none of whose candidates reached the floor

    def pick(self, label: str, donor: np.ndarray, mask: np.ndarray, candidates: Sequence[np.ndarray]) -> Pick:
        from .evidence import sample_evidence

        if self.scorer is not None:
            scores: list[Optional[float]] = list(self.scorer.score(list(candidates), [mask] * len(candidates),
                                                                   [label] * len(candidates)))
            chosen = choose(scores, self.scorer.floor)
        else:
            scores, chosen = [None] * len(candidates), 0
        fields = {"candidates": str(len(candidates)), "scorer": self.scorer.kind if self.scorer else "",
                  "candidate_scores": ";".join("" if s is None else f"{s:.{SCORE_DECIMALS}f}" for s in scores),
                  "chosen": "" if chosen is None else str(chosen)}
        if chosen is not None:
            ev = sample_evidence(donor, candidates[chosen], mask, reference_mean=self.refs_means.get(label),
                                 class_score=scores[chosen])
            fields.update({k: _fmt(v) for k, v in ev.items()})
        return Pick(chosen, scores, fields)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"candidates": self.k, "reference_means": self.refs_means}
        if self.scorer is not None:
            out.update(self.scorer.describe())
        return out


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    return f"{float(v):.6g}"

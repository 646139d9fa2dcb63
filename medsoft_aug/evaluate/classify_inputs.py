"""The inputs of ``evaluate classify``: method names, the manifests' rows by role (real train / real test /
usable synthetic, leak-filtered), the check that every manifest holds the same real rows, the training draws of
each method, and the image pool every method trains and tests on."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, UsageError
from ..progress import ProgressFn, report
from .data import load_image, resolve, to_square_tensor

log = logging.getLogger("medsoft_aug.evaluate.classify")

BUILTIN = ("baseline", "oversample", "classical")
DEFAULT_NAME = "medsoft"                       # the name of a bare ``--manifest PATH``
METHODS = (*BUILTIN, DEFAULT_NAME)
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")

@dataclass
class Splits:
    """Row indices into one manifest for each role (after leak filtering)."""
    train: list[int]
    test: list[int]
    synthetic: list[int]
    excluded_synthetic: dict[str, int]


def parse_manifest_arg(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (NAME, PATH); a bare ``PATH`` -> ("medsoft", PATH). NAME: a letter, then letters, digits,
    ``-`` or ``_`` (at most 32)."""
    name, sep, rest = str(text).partition("=")
    if sep and NAME_RE.match(name):
        return name, Path(rest)
    if sep and "/" not in name and "\\" not in name:
        raise UsageError(f"--manifest {text!r}: method name {name!r} must start with a letter and contain only "
                         "letters, digits, '-' or '_'")
    return DEFAULT_NAME, Path(text)


def select_rows(df: pd.DataFrame) -> Splits:
    """Real train / real test / usable synthetic rows. Synthetic rows are excluded when they are marked test,
    their donor is a test row, or their donor's patient is a test patient. Raises InputError without train or
    test rows."""
    real = df["origin"] == "real"
    train = df.index[real & (df["split"] == "train")].tolist()
    test = df.index[real & (df["split"] == "test")].tolist()
    if not test:
        raise InputError("manifest has no real test rows (split == test): nothing to evaluate on")
    if not train:
        raise InputError("manifest has no real training rows (split == train)")
    test_ids = set(df.loc[test, "sample_id"])
    excluded = {"split_test": 0, "donor_is_test_row": 0, "donor_is_test_patient": 0}
    pid = dict(zip(df["sample_id"], df["patient_id"])) if "patient_id" in df.columns else {}
    test_patients = {pid[s] for s in test_ids if pid.get(s)}
    synthetic = []
    for i in df.index[df["origin"] == "synthetic"]:
        row = df.loc[i]
        donor = row.get("donor_id", "")
        if row["split"] == "test":
            excluded["split_test"] += 1
        elif donor in test_ids:
            excluded["donor_is_test_row"] += 1
        elif pid.get(donor) and pid[donor] in test_patients:
            excluded["donor_is_test_patient"] += 1
        else:
            synthetic.append(i)
    if any(excluded.values()):
        log.warning("excluded %d synthetic rows that touch the test split: %s", sum(excluded.values()), excluded)
    if pid:
        overlap = {pid[s] for s in df.loc[train, "sample_id"] if pid.get(s)} & test_patients
        if overlap:
            log.warning("%d patient(s) have real rows in both train and test: the split is not by patient",
                        len(overlap))
    return Splits(train, test, synthetic, excluded)


def plan_draws(targets: np.ndarray, train: Sequence[int], synthetic: Mapping[str, Sequence[int]],
               class_names: list[str], seed: int) -> dict[str, list[int]]:
    """Training draws per method (positions into ``targets``, the class index of every image).

    ``synthetic``: generated method name -> positions of its usable synthetic rows (first = the oversampling
    target). ``oversample`` (and ``classical``) add copies of each class's real training rows, cycling through a
    seeded permutation, until every class has as many draws as the first generated method (real + synthetic);
    without one (or without synthetic rows) the target is the largest class count.
    """
    k = len(class_names)
    tr = np.asarray(train, int)
    first = np.asarray(next(iter(synthetic.values()), []), int)
    n_real = np.bincount(targets[tr], minlength=k)
    goal = n_real + np.bincount(targets[first], minlength=k) if first.size else np.full(k, n_real.max())
    rng = np.random.default_rng(seed)
    over = list(tr)
    for c in range(k):
        pool = tr[targets[tr] == c]
        extra = int(goal[c] - n_real[c])
        if extra <= 0:
            continue
        if pool.size == 0:
            log.warning("class %s has no real training rows: oversampling cannot add any", class_names[c])
            continue
        reps = int(np.ceil(extra / pool.size))
        cycle = np.concatenate([rng.permutation(pool) for _ in range(reps)])
        over.extend(cycle[:extra].tolist())
    return {"baseline": list(tr), "oversample": over, "classical": list(over),
            **{name: list(tr) + list(syn) for name, syn in synthetic.items()}}


@dataclass
class Inputs:
    frames: dict[str, pd.DataFrame]             # method name -> manifest rows
    splits: dict[str, Splits]
    class_names: list[str]
    normal_class: str

    @property
    def minority(self) -> list[int]:
        return [i for i, c in enumerate(self.class_names) if c != self.normal_class]


def same_real_rows(df_a: pd.DataFrame, sa: Splits, df_b: pd.DataFrame, sb: Splits, names: tuple[str, str],
                   paths: Mapping[str, Path]) -> None:
    """Raise InputError unless two manifests hold the same real test split (ids, labels, pixels) and the same
    real training rows (ids, labels): every method must be trained and tested on the same real data."""
    what = f"manifest {names[1]} ({paths[names[1]]}) and manifest {names[0]} ({paths[names[0]]})"
    for role in ("test", "train"):
        a = dict(zip(df_a.loc[getattr(sa, role), "sample_id"], df_a.loc[getattr(sa, role), "label"]))
        b = dict(zip(df_b.loc[getattr(sb, role), "sample_id"], df_b.loc[getattr(sb, role), "label"]))
        only = sorted(set(a) ^ set(b))
        if only:
            raise InputError(f"{what} have different real {role} splits: {len(only)} sample(s) in only one "
                             f"(first: {only[0]}); run balance from the same WORK")
        diff = sorted(s for s in a if a[s] != b[s])
        if diff:
            raise InputError(f"{what} label real {role} sample {diff[0]} differently ({a[diff[0]]} vs {b[diff[0]]})")
    img_b = dict(zip(df_b["sample_id"], df_b["image"]))
    for i in sa.test:
        sid = df_a.at[i, "sample_id"]
        pa = load_image(resolve(paths[names[0]].parent, df_a.at[i, "image"]), sid)
        pb = load_image(resolve(paths[names[1]].parent, img_b[sid]), sid)
        if pa.shape != pb.shape or not np.array_equal(pa, pb):
            raise InputError(f"{what} have different pixels for real test sample {sid}: the test split must be "
                             "identical")


@dataclass
class Pool:
    images: Any                                 # (N, 1, R, R) float32 torch tensor in [0, 1]
    targets: np.ndarray                         # (N,) class index
    ids: list[str]                              # real rows: sample_id; synthetic rows: "{method}/{sample_id}"
    train: list[int]                            # positions of the real training rows
    test: list[int]                             # positions of the real test rows
    synthetic: dict[str, list[int]]             # generated method -> positions of its usable synthetic rows
    test_ids: list[str]


def load_pool(manifests: Mapping[str, Path], resolution: int, inputs: Inputs, on_progress: ProgressFn) -> Pool:
    """Load the real rows of the first manifest and the usable synthetic rows of every manifest."""
    import torch

    first = next(iter(inputs.frames))
    cidx = {c: i for i, c in enumerate(inputs.class_names)}
    entries = [(first, i, "real") for i in inputs.splits[first].train + inputs.splits[first].test]
    entries += [(n, i, "syn") for n in inputs.frames for i in inputs.splits[n].synthetic]
    tensors, targets, ids = [], [], []
    for j, (name, row, kind) in enumerate(entries):
        df = inputs.frames[name]
        sid = df.at[row, "sample_id"]
        img = load_image(resolve(Path(manifests[name]).parent, df.at[row, "image"]), sid)
        tensors.append(to_square_tensor(img, resolution))
        targets.append(cidx[df.at[row, "label"]])
        ids.append(sid if kind == "real" else f"{name}/{sid}")
        report(on_progress, "load images", j + 1, len(entries))
    n_tr, n_te = len(inputs.splits[first].train), len(inputs.splits[first].test)
    syn, pos = {}, n_tr + n_te
    for name in inputs.frames:
        k = len(inputs.splits[name].synthetic)
        syn[name], pos = list(range(pos, pos + k)), pos + k
    return Pool(torch.stack(tensors), np.asarray(targets, int), ids, list(range(n_tr)),
                list(range(n_tr, n_tr + n_te)), syn, ids[n_tr:n_tr + n_te])

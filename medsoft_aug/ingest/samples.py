"""The per-row sample description shared by the layouts, safe path resolution and sample-id rules."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from ..csvio import read_csv_strings
from ..errors import InputError

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".png", ".tif", ".tiff")


@dataclass
class SampleSpec:
    """One 2D sample to ingest, as described by a labels CSV row (no pixels yet)."""

    sample_id: str
    label: str
    image: str                       # path relative to --images, as written in the CSV
    patient_id: str
    study_id: str
    row: int                         # 1-based data row in the labels / coordinates CSV (for messages)
    seg: str = ""
    slice_index: Optional[int] = None
    level: str = ""
    x: Optional[float] = None
    y: Optional[float] = None
    description: str = ""
    split: str = ""
    condition: str = ""
    severity: str = ""
    instance: str = ""
    series_id: str = ""
    problem: str = ""                # set when the row itself is invalid: becomes a per-sample failure


class SamplePathError(ValueError):
    """A CSV path that is absolute or resolves outside the --images root."""


def safe_resolve(path: Path, what: str) -> Path:
    """``path.resolve()``; InputError (not a RuntimeError/OSError/ValueError) for symlink loops, NUL bytes, ..."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise InputError(f"{what} {path} cannot be resolved ({_why(e)})") from None


def safe_is_dir(path: Path) -> bool:
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):
        return False


def _why(e: BaseException) -> str:
    if isinstance(e, RuntimeError) or (isinstance(e, OSError) and e.errno == 40):  # ELOOP
        return "symlink loop"
    if isinstance(e, ValueError):
        return "NUL byte in the path"
    return type(e).__name__


def resolve_under(root: Path, rel: str) -> Path:
    """``root / rel`` resolved (symlinks followed); SamplePathError if absolute, outside ``root``, a symlink loop
    or not a valid path (NUL byte)."""
    if not rel:
        raise SamplePathError("empty path")
    if "\0" in rel:
        raise SamplePathError("path contains a NUL byte")
    p = Path(rel)
    if p.is_absolute() or re.match(r"^[A-Za-z]:[\\/]", rel) or rel.startswith("\\"):
        raise SamplePathError(f"path {rel!r} is absolute; paths must be relative to --images")
    root_r = root.resolve()
    try:
        full = (root_r / p).resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise SamplePathError(f"path {rel!r} cannot be resolved ({_why(e)})") from None
    if full != root_r and root_r not in full.parents:
        raise SamplePathError(f"path {rel!r} escapes the --images folder")
    return full


def safe_id_from_path(rel: str, slice_index: Optional[int]) -> str:
    """Filesystem-safe sample id from an image path (+ ``_s{slice}``): ``a/b/c.nii.gz`` -> ``a_b_c``."""
    stem = rel.replace("\\", "/").strip("/")
    low = stem.lower()
    for suf in _IMAGE_SUFFIXES:
        if low.endswith(suf):
            stem = stem[: -len(suf)]
            break
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "sample"
    if not s[0].isalnum():
        s = "s" + s
    s = s[:180]
    return f"{s}_s{slice_index}" if slice_index is not None else s


def make_unique(ids: list[str]) -> list[str]:
    """Suffix ``_2``, ``_3``, ... on repeats (case-insensitive, for case-insensitive filesystems)."""
    seen: set[str] = set()
    out = []
    for sid in ids:
        cand, n = sid, 1
        while cand.lower() in seen:
            n += 1
            cand = f"{sid}_{n}"
        seen.add(cand.lower())
        out.append(cand)
    return out


def check_unique_given(ids: list[str], what: str) -> None:
    """InputError naming the first repeated (case-insensitive) or unsafe sample id."""
    seen: dict[str, int] = {}
    for i, sid in enumerate(ids, start=1):
        if not SAFE_ID.match(sid):
            raise InputError(f"{what} row {i}: sample_id {sid!r} is not filesystem-safe "
                             "(letters, digits, '.', '_', '-'; up to 200 characters)")
        if sid.lower() in seen:
            raise InputError(f"{what}: sample_id {sid!r} is repeated (rows {seen[sid.lower()]} and {i})")
        seen[sid.lower()] = i


def read_csv_table(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV as stripped strings (:func:`medsoft_aug.csvio.read_csv_strings`: UTF-8 with or without BOM,
    CRLF, empty cells as ""); InputError naming the file and the line for anything else."""
    return read_csv_strings(path, what)


def require_columns(df: pd.DataFrame, required: list[str], what: str, path: Path) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{what} {path.name} is missing required column(s): {', '.join(missing)}")

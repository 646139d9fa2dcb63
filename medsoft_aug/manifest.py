"""The augmented-dataset manifest (``OUT/manifest.csv``): one row per real sample (all splits) and per synthetic one.

Columns (``MANIFEST_COLUMNS``)::

    sample_id      unique id (real: from WORK/index.csv; synthetic: syn-{class}-{k:05d})
    patient_id     real: the patient; synthetic: the donor's patient (so patient-level splits stay leak-free)
    split          train | val | test (synthetic rows are always train)
    label          class name
    origin         real | synthetic
    image          path relative to the manifest's folder
    mask           soft mask (.npy, float32 (H, W) in [0,1]) relative to the manifest's folder, or empty
    donor_id       synthetic: the normal training sample inpainted; real: empty
    prompt         synthetic: the lesion description used; real: empty
    negative_prompt  synthetic: the text classifier-free guidance steered away from (``--negative-prompts
                   other-classes``); empty: the empty text (the paper's)
    seed           synthetic: per-sample seed derived from (run seed, sample_id)
    model          synthetic: MODEL_DIR reference (folder name)
    model_sha256   synthetic: content hash of the model (from medsoft_model.json)
    steps, guidance, eta   synthetic: DDIM sampling options
    format         png | nifti | dicom
    sha256         of the image file
  synthetic rows only (``balance``; empty for real rows):
    candidates, scorer, candidate_scores, chosen   post-selection (``--candidates K``): K, the scorer, every
                   candidate's score (";"-separated, candidate order) and the index of the kept one
    donor_mean, synthetic_mean, mean_change, contrast, toward_class, class_score   per-sample evidence
                   (``generate.evidence``): what changed inside the mask against the donor, and the kept
                   candidate's score

Written atomically, once, when a run (or a shard) is complete; ``merge_manifests`` joins shard outputs with paths
rebased to the merged file's folder.

While a run is going, its rows go to the resume ledger (:class:`Ledger`, ``OUT/.ledger.jsonl``): one JSON object
(a manifest row) per line, appended after each batch and fsync'd, so recording a batch costs O(batch) whatever the
size of the dataset, and a pipeline waiting for ``manifest.csv`` never reads a partial one. A line torn by a kill
(the last one, without its newline) is ignored and cut off before the next append; a later line for the same
``sample_id`` replaces an earlier one.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pandas as pd

from .errors import InputError, UsageError
from .fsutil import atomic_write_csv, atomic_write_json

MANIFEST_COLUMNS = ["sample_id", "patient_id", "split", "label", "origin", "image", "mask", "donor_id", "prompt",
                    "negative_prompt", "seed", "model", "model_sha256", "steps", "guidance", "eta", "format", "sha256",
                    "candidates", "scorer", "candidate_scores", "chosen", "donor_mean", "synthetic_mean",
                    "mean_change", "contrast", "toward_class", "class_score"]
# Columns added after the first manifests were written: a manifest without them reads with them empty.
LATER_COLUMNS = ("negative_prompt", "candidates", "scorer", "candidate_scores", "chosen", "donor_mean",
                 "synthetic_mean", "mean_change", "contrast", "toward_class", "class_score")
LEDGER_FILE = ".ledger.jsonl"
log = logging.getLogger("medsoft_aug.manifest")
# Columns that may legitimately differ between two copies of the same row (paths depend on the folder).
_PATH_COLUMNS = ("image", "mask")


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame(columns=MANIFEST_COLUMNS)


def write_manifest(path: str | Path, rows: pd.DataFrame) -> None:
    """Validate and write atomically (temp file + rename); rows sorted: real first, then by sample_id."""
    missing = [c for c in MANIFEST_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"manifest rows lack columns {missing}")
    if rows["sample_id"].duplicated().any():
        dup = rows.loc[rows["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise ValueError(f"duplicate sample_id {dup} in manifest")
    df = rows[MANIFEST_COLUMNS].astype(str)
    df = df.assign(_o=(df["origin"] != "real").astype(int)).sort_values(["_o", "sample_id"], kind="stable")
    atomic_write_csv(path, df.drop(columns="_o"))


def read_manifest(path: str | Path, required: Sequence[str] = tuple(MANIFEST_COLUMNS)) -> pd.DataFrame:
    """Read a manifest as strings; InputError when missing, unreadable or lacking any ``required`` column
    (:data:`LATER_COLUMNS` a manifest of an older version lacks are added, empty)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"manifest {p} not found")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"manifest {p} cannot be read: {' '.join(str(e).split())[:160]}") from None
    for c in LATER_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"manifest {p} is missing columns: {', '.join(missing)}")
    return df


def _end_of_last_line(path: Path, size: int, block: int = 1 << 16) -> int:
    """Offset just after the last newline of ``path`` (0 when none), reading backwards from ``size``."""
    with open(path, "rb") as fh:
        end = size
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            i = fh.read(end - start).rfind(b"\n")
            if i >= 0:
                return start + i + 1
            end = start
    return 0


class Ledger:
    """Append-only resume ledger of manifest rows (see the module docstring). Use as a context manager::

        with Ledger(out / LEDGER_FILE, reset=force) as ledger:
            ledger.append(rows_of_one_batch)
    """

    def __init__(self, path: str | Path, reset: bool = False):
        self.path = Path(path)
        self._fh: Optional[Any] = None
        self.reset = reset

    @staticmethod
    def read(path: str | Path) -> dict[str, dict[str, str]]:
        """Rows by sample_id ({} when there is no ledger); a torn last line is ignored, a damaged line skipped."""
        path = Path(path)
        if not path.is_file():
            return {}
        rows: dict[str, dict[str, str]] = {}
        lines = path.read_bytes().split(b"\n")
        for i, line in enumerate(lines[:-1], 1):                 # lines[-1]: after the last newline (torn or b"")
            try:
                row = json.loads(line)
                rows[str(row["sample_id"])] = {c: str(row.get(c, "")) for c in MANIFEST_COLUMNS}
            except (ValueError, KeyError, TypeError):
                log.warning("%s: line %d is damaged; its sample will be redone", path.name, i)
        return rows

    def __enter__(self) -> "Ledger":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.reset:
            self.path.unlink(missing_ok=True)
        self._fh = open(self.path, "ab")
        size = self._fh.seek(0, os.SEEK_END)
        keep = _end_of_last_line(self.path, size)
        if keep != size:                                         # cut a torn last line before appending
            self._fh.truncate(keep)
            self._fh.seek(keep)
        return self

    def append(self, rows: Iterable[dict]) -> None:
        """Append rows (one line each) and make them durable (flush + fsync) before returning."""
        if self._fh is None:
            raise RuntimeError("ledger not open")
        data = b"".join(json.dumps({c: str(r.get(c, "")) for c in MANIFEST_COLUMNS}, ensure_ascii=False)
                        .encode("utf-8") + b"\n" for r in rows)
        if not data:
            return
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class MergeResult:
    out: str
    inputs: list[str]
    n_rows: int
    n_real: int
    n_synthetic: int
    duplicates: list[str] = field(default_factory=list)     # same sample listed identically more than once
    models: list[str] = field(default_factory=list)          # distinct model_sha256 among synthetic rows

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "inputs": self.inputs, "rows": self.n_rows, "real": self.n_real,
                "synthetic": self.n_synthetic, "n_duplicates": len(self.duplicates),
                "duplicates": self.duplicates[:50], "models": self.models}


def _rebase(rel: str, src_dir: Path, dst_dir: Path) -> str:
    if not rel:
        return ""
    return Path(os.path.relpath((src_dir / rel).resolve(), dst_dir.resolve())).as_posix()


def merge_manifests(paths: Sequence[str | Path], out: str | Path) -> MergeResult:
    """Join manifests (e.g. one per ``--shard K/N``) into one at ``out``.

    Rows are keyed by ``sample_id``. The same sample listed with equal content (all columns but the image/mask
    paths, hash included) is a duplicate: kept once and reported. Different content under one id is a conflict:
    InputError naming the ids, nothing written. Image and mask paths are rewritten relative to ``out``'s folder;
    a listed image that does not exist is an InputError. ``out`` may be a folder (then ``out/manifest.csv``).
    """
    if len(paths) < 1:
        raise UsageError("manifest merge needs at least one manifest")
    out = Path(out)
    if out.is_dir() or str(out).endswith(("/", os.sep)):
        out = out / "manifest.csv"
    inputs = [Path(p) for p in paths]
    if any(out.resolve() == p.resolve() for p in inputs):
        raise UsageError(f"--out {out} is one of the input manifests; choose a new path")
    frames = []
    for p in inputs:
        df = read_manifest(p)
        for sid, img in zip(df["sample_id"], df["image"]):
            if img and not (p.parent / img).is_file():
                raise InputError(f"{sid}: image listed in {p} not found")
        for col in _PATH_COLUMNS:
            df[col] = [_rebase(v, p.parent, out.parent) for v in df[col]]
        df["_src"] = str(p)
        frames.append(df)
    allrows = pd.concat(frames, ignore_index=True)
    content = [c for c in MANIFEST_COLUMNS if c not in _PATH_COLUMNS]
    duplicates, conflicts, keep = [], [], []
    for sid, grp in allrows.groupby("sample_id", sort=False):
        if len(grp) > 1:
            if len(grp[content].drop_duplicates()) > 1:
                conflicts.append(str(sid))
            else:
                duplicates.append(str(sid))
        keep.append(grp.index[0])
    if conflicts:
        raise InputError(f"{len(conflicts)} sample(s) differ between manifests (conflict): "
                         + ", ".join(conflicts[:5]) + (" ..." if len(conflicts) > 5 else ""))
    merged = allrows.loc[sorted(keep)].drop(columns="_src")
    write_manifest(out, merged)
    write_datalist(datalist_path(out), merged)
    syn = merged[merged["origin"] == "synthetic"]
    return MergeResult(out=str(out), inputs=[str(p) for p in inputs], n_rows=len(merged),
                       n_real=int((merged["origin"] == "real").sum()), n_synthetic=len(syn),
                       duplicates=duplicates, models=sorted(set(syn["model_sha256"])))


# ---- MONAI datalist ------------------------------------------------------------------------------------------
DATALIST_LISTS = {"train": "training", "val": "validation", "test": "test"}


def datalist(rows: pd.DataFrame, folder: str | Path) -> dict[str, Any]:
    """The manifest's rows as a MONAI datalist (``monai.data.load_decathlon_datalist``; the Decathlon layout).

    ``training`` / ``validation`` / ``test`` hold the rows of the train / val / test split (synthetic rows are
    train rows), in the manifest's order, each ``{"image", "label", "class", "sample_id", "patient_id",
    "synthetic"}`` plus ``"mask"`` (the soft mask .npy) when the row has one and ``"seg"`` (the DICOM
    Segmentation written beside a DICOM image, ``{id}_seg.dcm``) when it exists. ``label`` is the class index in
    ``labels`` (class names sorted), ``class`` its name, ``synthetic`` a boolean (not the manifest's ``origin``
    string: MONAI turns any string naming an existing path, such as ``real``, into a path). Paths are relative to
    ``folder`` (the datalist's folder).
    """
    folder = Path(folder)
    classes = sorted({str(c) for c in rows["label"]})
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, Any] = {"name": "medsoft-aug balanced dataset", "labels": {str(i): c for c, i in index.items()},
                           **{name: [] for name in DATALIST_LISTS.values()}}
    order = rows.assign(_o=(rows["origin"] != "real").astype(int)).sort_values(["_o", "sample_id"], kind="stable")
    for r in order.drop(columns="_o").astype(str).to_dict("records"):
        item = {"image": r["image"], "label": index[str(r["label"])], "class": str(r["label"]),
                "sample_id": r["sample_id"], "patient_id": r["patient_id"], "synthetic": r["origin"] == "synthetic"}
        if r.get("mask"):
            item["mask"] = r["mask"]
        seg = str(r["image"])[:-len(".dcm")] + "_seg.dcm" if str(r["image"]).endswith(".dcm") else ""
        if seg and (folder / seg).is_file():
            item["seg"] = seg
        out[DATALIST_LISTS.get(str(r["split"]), "training")].append(item)
    out["numTraining"] = len(out["training"])
    return out


def datalist_path(manifest: str | Path) -> Path:
    """``datalist.json`` beside ``manifest.csv`` (``X.datalist.json`` beside a manifest named ``X.csv``)."""
    p = Path(manifest)
    return p.with_name("datalist.json") if p.name == "manifest.csv" else p.with_suffix(".datalist.json")


def write_datalist(path: str | Path, rows: pd.DataFrame) -> None:
    """Write :func:`datalist` of ``rows`` atomically at ``path`` (``OUT/datalist.json``, beside manifest.csv)."""
    atomic_write_json(Path(path), datalist(rows, Path(path).parent))

"""OUT of a balance run: what a previous run left (resume), the copies of real rows, the final manifest.

Resume: while the run goes, finished samples are appended to the resume ledger ``OUT/.ledger.jsonl``
(``manifest.Ledger``: one row per line, fsync'd after each batch, O(batch) per batch); it lists only samples whose
image and mask were fully written (each by temp file + rename), so a killed run never lists a half-written image.
``manifest.csv`` means complete: it is removed when a run starts work and written once, by
:func:`write_final_manifest`, when the run (or shard) has finished (complete, or partial with the failures in
balance.json); files under ``real/`` and ``synthetic/`` that it does not list (a previous run's, e.g. before
``--force`` with a smaller plan) are removed then. A rerun with the same options skips every listed sample whose
file still has its recorded sha256, and when nothing is left to do it writes nothing at all. A different set of
options in an existing OUT is refused unless ``force``.

Real rows are copied once per OUT: slices are written as 16-bit PNG by a few threads, soft masks are hard-linked
from WORK where the bytes would be identical (copied otherwise, e.g. across file systems).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fsutil import atomic_path, load_npy, sha256_file
from ..locks import LOCK_FILES
from ..manifest import (LEDGER_FILE, MANIFEST_COLUMNS, Ledger, datalist_path, read_manifest, write_datalist,
                        write_manifest)
from ..progress import ProgressFn, report
from .plan import PlanItem
from .writers import seg_path, write_png16

# Manifest fields that must match for a listed synthetic sample to count as done.
_SAME = ("label", "donor_id", "prompt", "seed", "model_sha256", "steps", "guidance", "eta", "format")


def resume_state(out: Path, fingerprint: dict, force: bool, items: list[PlanItem], index: pd.DataFrame, k: int,
                  consts: dict[str, str]) -> tuple[dict, dict[str, dict], list[str], list[PlanItem], list[str]]:
    """(previous balance.json, its verified rows still in this plan, real ids of this shard, synthetic items
    left to do, real ids left to copy)."""
    prev = _previous_run(out, fingerprint, force)
    rows = {} if force else _verified_rows(out, prev)
    real_ids = list(index["sample_id"]) if k == 1 else []
    keep = {it.sample_id for it in items} | set(real_ids)
    rows = {s: r for s, r in rows.items() if s in keep}
    todo = [it for it in items if not _done(rows.get(it.sample_id), it, consts)]
    return prev, rows, real_ids, todo, [s for s in real_ids if s not in rows]


@dataclass
class Job:
    """What the writing steps of one balance run need."""
    work: Path
    index: pd.DataFrame
    masks: pd.DataFrame
    out: Path
    fmt: str
    fmt_root: Optional[Path]
    consts: dict[str, str]
    on_progress: ProgressFn
    created: bool              # OUT did not exist before this run (removed again when the run makes nothing)
    ledger: Optional[Ledger] = None


def _previous_run(out: Path, fingerprint: dict, force: bool) -> dict:
    p = out / "balance.json"
    if not p.is_file():
        if out.exists() and any(q.name not in LOCK_FILES for q in out.iterdir()) and not force:
            raise InputError(f"{out} exists and is not a balance output folder: choose a new --out")
        return {}
    try:
        prev = json.loads(p.read_text("utf-8"))
    except ValueError:
        prev = {}
    old = prev.get("fingerprint", {})
    if old != fingerprint and not force:
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        raise InputError(f"{out} holds a balance run with other options ({', '.join(diff)}): use a new --out, "
                         "or --force to redo it")
    return prev if old == fingerprint else {}


def _verified_rows(out: Path, prev: dict) -> dict[str, dict]:
    """Rows of the previous run (its ledger, else its manifest.csv) whose files still hash to the recorded
    sha256."""
    if not prev:
        return {}
    if (out / LEDGER_FILE).is_file():
        listed = list(Ledger.read(out / LEDGER_FILE).values())
    elif (out / "manifest.csv").is_file():
        listed = read_manifest(out / "manifest.csv").to_dict("records")
    else:
        return {}
    rows = {}
    for r in listed:
        img, msk = out / r["image"], (out / r["mask"]) if r["mask"] else None
        if img.is_file() and sha256_file(img) == r["sha256"] and (msk is None or msk.is_file()):
            rows[r["sample_id"]] = r
    return rows


def _done(row: Optional[dict], it: PlanItem, consts: dict) -> bool:
    if row is None or row.get("origin") != "synthetic":
        return False
    want = {"label": it.label, "donor_id": it.donor_id, "prompt": it.prompt, "seed": str(it.seed), **consts}
    return all(str(row.get(f, "")) == str(want[f]) for f in _SAME)


def _frame(rows: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame(list(rows.values()), columns=MANIFEST_COLUMNS).fillna("")


def write_real_rows(job: Job, ids: list[str], rows: dict[str, dict], chunk: int = 256) -> None:
    """Copy real slices (16-bit PNG, a few threads) and their soft masks (hard links where byte-identical) into
    OUT/real/; append their rows to the ledger a chunk at a time and add them to ``rows``. The files are not
    fsync'd one by one (7 ms each on a plain disk): their sha256 is in the ledger and every listed file is
    re-hashed before a rerun reuses it, so one a power loss truncated is redone."""
    if not ids:
        return
    from concurrent.futures import ThreadPoolExecutor

    mask_of = dict(zip(job.masks["sample_id"], job.masks["mask"].where(job.masks.get("status", "ok") == "ok", "")))
    by_id = job.index.set_index("sample_id", drop=False)

    def copy(sid: str) -> dict[str, str]:
        r = by_id.loc[sid]
        src = job.work / r["image"]
        if not src.is_file():
            raise InputError(f"{sid}: slice {r['image']} listed in index.csv not found in WORK")
        img_rel, mask_rel = f"real/{sid}.png", ""
        write_png16(job.out / img_rel, load_npy(src), durable=False)    # hashed in the ledger, checked on reuse
        if mask_of.get(sid) and (job.work / mask_of[sid]).is_file():
            mask_rel = f"real/{sid}_mask.npy"
            link_or_save_npy(job.work / mask_of[sid], job.out / mask_rel)
        return {c: "" for c in MANIFEST_COLUMNS} | {
            "sample_id": sid, "patient_id": r.get("patient_id", ""), "split": r["split"], "label": r["label"],
            "origin": "real", "image": img_rel, "mask": mask_rel, "format": "png",
            "sha256": sha256_file(job.out / img_rel)}

    (job.out / "real").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(ids), chunk):
            new = list(pool.map(copy, ids[start:start + chunk]))
            job.ledger.append(new)
            rows.update((r["sample_id"], r) for r in new)
            report(job.on_progress, "copy real samples", start + len(new), len(ids))


def link_or_save_npy(src: Path, dst: Path) -> None:
    """``dst`` = ``src`` as float32 .npy: a hard link when ``src`` already holds exactly those bytes (linked under
    a temp name, then renamed: nothing is written into WORK, not even its mode), else a new file (also when
    linking is not possible, e.g. across file systems). Not fsync'd: see ``fsutil.atomic_path(durable=False)``."""
    import io

    data = src.read_bytes()
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)),
            allow_pickle=False)
    if buf.getvalue() == data:
        tmp = dst.parent / f".{dst.name}.{os.getpid()}.link.tmp"
        try:
            tmp.unlink(missing_ok=True)
            os.link(src, tmp)
            os.replace(tmp, dst)
            return
        except OSError:
            tmp.unlink(missing_ok=True)
    with atomic_path(dst, durable=False) as tmp_path:
        tmp_path.write_bytes(buf.getvalue())


def write_final_manifest(out: Path, rows: dict[str, dict]) -> Path:
    """The one place a final ``manifest.csv`` is written (the run or shard has finished); files under real/ and
    synthetic/ that it does not list are removed first (e.g. left by a larger plan before ``--force``)."""
    listed = {r[c] for r in rows.values() for c in ("image", "mask") if r.get(c)}
    listed |= {seg_path(r["image"]).as_posix() for r in rows.values() if str(r.get("image", "")).endswith(".dcm")}
    for sub in ("real", "synthetic"):
        root = out / sub
        if not root.is_dir():
            continue
        for f in sorted(root.rglob("*"), reverse=True):
            rel = f.relative_to(out).as_posix()
            if f.is_file() and rel not in listed:
                f.unlink()
            elif f.is_dir() and not any(f.iterdir()):
                f.rmdir()
    write_manifest(out / "manifest.csv", _frame(rows))
    write_datalist(datalist_path(out / "manifest.csv"), _frame(rows))       # the same rows, MONAI's datalist
    return out / "manifest.csv"

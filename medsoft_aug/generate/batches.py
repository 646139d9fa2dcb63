"""The writing half of ``balance``: create OUT, copy the real rows, then generate the synthetic samples batch by
batch, writing each (image and mask, each atomically) and appending each finished batch to the resume ledger. The
writing of batch i runs on one background thread while batch i+1 is generated (``writeback``): same bytes, same
ledger order, errors raised in the loop.

The model (``runner.Generator``) turns donor arrays into synthetic arrays; this module reads the donors from WORK
(``workdir.load_pair``) and writes what comes back through ``writers``; ``outdir`` holds the resume state.
"""
from __future__ import annotations

import shutil
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd

from ..errors import FailureList, InputError
from ..fsutil import atomic_save_npy, atomic_write_json, sha256_file
from ..manifest import LEDGER_FILE, Ledger
from ..progress import batch_steps, report
from ..workdir import load_pair
from .outdir import Job, write_real_rows
from .plan import PlanItem
from .writers import synthetic_paths, write_image

if TYPE_CHECKING:
    from .runner import Generator
    from .select import Picker


def write_outputs(job: Job, gen: Optional[Generator], picker: Optional[Picker], fingerprint: dict,
                  rows: dict[str, dict], todo: list[PlanItem], real_todo: list[str],
                  reset: bool) -> tuple[int, float, FailureList]:
    """Create OUT (temp files of a killed run removed, manifest.csv removed: the run is not complete), open the
    resume ledger (``reset``: a new one, holding ``rows``), copy the real rows, then generate ``todo``; an OUT
    this run created is removed again when it fails before holding any synthetic sample. Returns (generated,
    seconds spent generating, failures)."""
    out, failures = job.out, FailureList()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.rglob(".*.tmp"):                 # never listed anywhere
            stale.unlink(missing_ok=True)
        (out / "manifest.csv").unlink(missing_ok=True)
        atomic_write_json(out / "balance.json", {"status": "running", "fingerprint": fingerprint})
        with Ledger(out / LEDGER_FILE, reset=reset) as ledger:
            if reset or not (out / LEDGER_FILE).stat().st_size:
                ledger.append(rows.values())              # rows verified from an older manifest.csv
            job.ledger = ledger
            write_real_rows(job, real_todo, rows)
            if gen is None:
                return 0, 0.0, failures
            t0 = time.time()
            generated = generate(job, gen, picker, todo, rows, failures)
            return generated, time.time() - t0, failures
    except BaseException:
        if job.created and not any(r.get("origin") == "synthetic" for r in rows.values()):
            shutil.rmtree(out, ignore_errors=True)
        raise


WRITE_AHEAD = 1      # batches queued for the background writer (writeback.py); 0: the sequential loop (tests)


def generate(job: Job, gen: Generator, picker: Picker, todo: list[PlanItem], rows: dict[str, dict],
             failures: FailureList) -> int:
    """Inpaint ``todo`` batch by batch (K candidates per planned sample, each with its own seed, in the same
    engine batch of about ``batch_size`` rows); while the next batch is generated, a background thread keeps
    each sample's chosen candidate, writes and hashes it, and appends the batch to the ledger (only whole
    batches are listed; ``writeback.BackgroundWriter``: in order, errors raised here). Adds rows and failures in
    place (in the sequential order); returns the number of samples generated."""
    from .select import candidate_seed
    from .writeback import BackgroundWriter

    by_id = job.index.set_index("sample_id", drop=False)
    mask_of = dict(zip(job.masks["sample_id"], job.masks["mask"]))
    k, done = picker.k, {"samples": 0, "items": 0}
    per_batch = max(1, gen.batch_size // k)
    n_batches = -(-len(todo) // per_batch)
    report(job.on_progress, "balance", 0, len(todo))
    with BackgroundWriter(depth=WRITE_AHEAD) as writer:
        for start in range(0, len(todo), per_batch):
            batch = todo[start:start + per_batch]
            ok, pairs, bad = [], [], []
            for it in batch:
                try:
                    pairs.append(donor_pair(job.work, by_id, mask_of, it.donor_id))
                    ok.append(it)
                except InputError as e:
                    bad.append((it.sample_id, str(e)))
            on_step = batch_steps(job.on_progress, "balance: denoising steps", start // per_batch, n_batches)
            outs = gen.inpaint([p[0] for p in pairs for _ in range(k)], [p[1] for p in pairs for _ in range(k)],
                               [it.prompt for it in ok for _ in range(k)],
                               [candidate_seed(it.seed, j) for it in ok for j in range(k)], on_step,
                               negatives=[it.negative_prompt for it in ok for _ in range(k)]) if ok else []
            writer.submit(partial(_finish_batch, job, gen, picker, ok, pairs, outs, bad, by_id, rows, failures,
                                  done, len(batch)))
            report(job.on_progress, "balance", done["items"], len(todo))
    report(job.on_progress, "balance", done["items"], len(todo))
    return done["samples"]


def _finish_batch(job: Job, gen: Generator, picker: Picker, ok: list[PlanItem],
                  pairs: list[tuple[np.ndarray, np.ndarray]], outs: list[np.ndarray], bad: list[tuple[str, str]],
                  by_id: pd.DataFrame, rows: dict[str, dict], failures: FailureList, done: dict[str, int],
                  n_items: int) -> None:
    """The CPU half of one batch (on the writer thread): the donors that could not be read, then each
    sample's choice and files (``_keep_and_write``), then the ledger (O(batch), durable) and ``rows``."""
    for sid, problem in bad:
        failures.add(sid, problem)
    new = _keep_and_write(job, gen, picker, ok, pairs, outs, by_id, failures)
    job.ledger.append(new.values())
    rows.update(new)
    done["samples"] += len(new)
    done["items"] += n_items


def _keep_and_write(job: Job, gen: Generator, picker: Picker, ok: list[PlanItem],
                    pairs: list[tuple[np.ndarray, np.ndarray]], outs: list[np.ndarray], by_id: pd.DataFrame,
                    failures: FailureList) -> dict[str, dict]:
    """Each planned sample's chosen candidate (of ``picker.k`` consecutive ``outs``) written; its manifest row
    with the selection fields, by sample id. A sample whose candidates all miss the floor is a failure."""
    k, new = picker.k, {}
    for i, (it, (donor, msk)) in enumerate(zip(ok, pairs)):
        used = gen.used_mask(msk)                                 # the mask generation used (w/o SMIS: hard)
        pick = picker.pick(it.label, donor, used, outs[i * k:(i + 1) * k])
        if pick.chosen is None:
            picker.rejected += 1
            failures.add(it.sample_id, f"none of its {k} candidates reached the {picker.scorer.kind} scorer's "
                         f"floor {picker.scorer.floor:g} (scores {pick.fields['candidate_scores']})")
            continue
        try:
            row = write_sample(it, outs[i * k + pick.chosen], used, by_id.loc[it.donor_id].to_dict(), job)
            new[it.sample_id] = {**row, **pick.fields}
        except InputError as err:
            failures.add(it.sample_id, str(err))
    return new


def donor_pair(work: Path, by_id: pd.DataFrame, mask_of: dict, donor_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The donor's slice and soft mask from WORK; InputError naming the donor when unreadable."""
    if donor_id not in by_id.index:
        raise InputError(f"donor {donor_id} not in index.csv")
    return load_pair(work, by_id.loc[donor_id, "image"], mask_of.get(donor_id, ""), f"donor {donor_id}")


def write_sample(it: PlanItem, img: np.ndarray, msk: np.ndarray, donor: dict, job: Job) -> dict[str, str]:
    """Write one synthetic image and the mask generation used (each atomically); return its manifest row."""
    out = job.out
    img_rel, mask_rel = synthetic_paths(it.sample_id, it.label, job.fmt)
    write_image(out / img_rel, img, job.fmt, donor, job.fmt_root, sample_id=it.sample_id, description=it.prompt,
                mask01=msk)
    atomic_save_npy(out / mask_rel, msk.astype(np.float32))
    return {"sample_id": it.sample_id, "patient_id": donor.get("patient_id", ""), "split": "train",
            "label": it.label, "origin": "synthetic", "image": img_rel, "mask": mask_rel,
            "donor_id": it.donor_id, "prompt": it.prompt, "negative_prompt": it.negative_prompt,
            "seed": str(it.seed), **job.consts,
            "sha256": sha256_file(out / img_rel)}

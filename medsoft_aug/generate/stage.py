"""``balance``: WORK + MODEL_DIR -> OUT/ with synthetic diseased samples, manifest.csv and balance.json.

OUT layout::

    manifest.csv                      real rows (all splits) + synthetic rows (manifest.MANIFEST_COLUMNS)
    datalist.json                     the manifest's rows as a MONAI datalist (manifest.write_datalist)
    balance.json                      run record: fingerprint, options (with ``geometry``: the grid mapping
                                      used), counts before/after, timings, images/s
    real/{sample_id}.png              the real normalized slice (16-bit PNG of WORK/slices, [0,1] -> 0..65535)
    real/{sample_id}_mask.npy         its soft mask (when masks.csv has one)
    synthetic/{class}/{id}.png|.nii.gz|.dcm   the synthetic image (--output-format)
    synthetic/{class}/{id}_mask.npy   the mask used (the donor's soft mask, or M_b >= 0.5 for a --mask-mode hard
                                      model), float32 (H, W) in [0,1]
    synthetic/{class}/{id}_seg.dcm    (dicom) that mask as a DICOM Segmentation, FRACTIONAL, referencing {id}.dcm

Data flows one way: WORK is read through ``workdir``, ``runner.Generator`` turns donor arrays into synthetic
arrays (through the grid mapping MODEL_DIR was trained with, ``geometry``), and this module writes them through
``writers``. Real rows reference copies inside OUT (not WORK) so that OUT is a self-contained dataset. With
``--shard K/N`` only shard 1 writes the real rows; ``manifest merge`` joins the shards.

Resume, the final manifest and the copies of real rows: ``outdir``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import FailureList, InputError, ModelError, PartialFailure, UsageError
from ..fsutil import atomic_save_npy, atomic_write_json, sha256_file
from ..geometry import MODES, GridMapping, mapping_for_model
from ..locks import folder_lock
from ..manifest import LEDGER_FILE, Ledger
from ..progress import ProgressFn, batch_steps, report
from ..versions import package_versions
from ..workdir import check_work, images_root_of, load_pair, normal_class_of
from .plan import BalancePlan, PlanItem, parse_shard, plan_balance
from .fastpath import FastPath
from .prompts import load_prompts
from .outdir import Job, resume_state, write_final_manifest, write_real_rows
from .scaleout import AutoShard, finish_shard, resolve_shard, shard_dir
from .writers import FORMATS, synthetic_paths, write_image

if TYPE_CHECKING:
    from .runner import Generator

log = logging.getLogger("medsoft_aug.generate.stage")

_MODEL_FILES = ("medsoft_model.json", "msc.safetensors", "adapter.safetensors", "unet.safetensors")


# ---- inputs ------------------------------------------------------------------------------------------------
def model_dir_sha256(model_dir: Path) -> str:
    """Content hash of a MODEL_DIR: its config and weight files (the base model is pinned inside the config)."""
    if not (model_dir / "medsoft_model.json").is_file():
        raise ModelError(f"model folder {model_dir} not found or has no medsoft_model.json: run `medsoft-aug train`")
    h = hashlib.sha256()
    for name in _MODEL_FILES:
        if (model_dir / name).is_file():
            h.update(f"{name}:{sha256_file(model_dir / name)}\n".encode())
    return h.hexdigest()


# ---- the stage ---------------------------------------------------------------------------------------------
def balance(work: str | Path, model: Optional[str | Path], out: Optional[str | Path], *,
            target_ratio: float = 1.0, classes: Optional[Sequence[str]] = None,
            prompts: Optional[str | Path] = None, prompt_mode: str = "auto", seed: int = 0, steps: int = 50,
            guidance: float = 7.5, eta: float = 0.0, batch_size: int = 8, device: str = "auto",
            output_format: str = "png", shard: Optional[str] = None, dry_run: bool = False, force: bool = False,
            normal_class: Optional[str] = None, images_root: Optional[str | Path] = None,
            base_model: Optional[str] = None, blend: str = "masked", max_synthetic: Optional[int] = None,
            geometry: Optional[str] = None, crop_margin: Optional[float] = None, resolution: Optional[int] = None,
            scheduler: str = "ddim", dtype: str = "auto", channels_last: bool = False, compile_unet: bool = False,
            candidates: int = 1, scorer: Optional[str] = None, min_score: Optional[float] = None,
            on_progress: ProgressFn = None) -> dict[str, Any]:
    """Balance every disease class of WORK's train split to ``target_ratio`` x normal by soft-mask inpainting.

    Returns a JSON-ready summary (``dry_run``: the plan only). Raises UsageError, InputError / ModelError (bad
    WORK, model or OUT; nothing written), PartialFailure (some samples failed; the rest written and listed).
    ``base_model`` overrides MODEL_DIR's base (same hash), ``geometry`` / ``crop_margin`` / ``resolution`` its grid
    mapping (warned); ``blend``: Eq. 7's latent outside the mask, ``masked`` = VAE(I_m) or ``donor`` = VAE(x0);
    ``scheduler``: ``ddim`` (paper) or a multistep solver (``dpmsolver++``, ``unipc``; see engine.SamplingOptions);
    ``dtype`` / ``channels_last`` / ``compile_unet``: engine fast-path options (``fastpath.FastPath``), not part
    of the fingerprint (outputs equal within the tolerances tested), recorded in balance.json's ``engine``.
    ``candidates`` K > 1: K candidates per planned sample, the best by ``scorer`` (``feature`` by default, or
    ``classifier``; see ``generate.select``) kept when its score reaches ``min_score`` (the scorer's default floor
    when None); a sample none of whose candidates does is a failure. Every synthetic row carries its evidence."""
    # 1. Options, WORK and the plan (a dry run stops here: no model loaded, nothing written).
    work = Path(work)
    _check_options(output_format, blend, steps, batch_size, guidance, eta, geometry, crop_margin, resolution)
    _check_scheduler(scheduler, eta)
    scorer = _check_selection(candidates, scorer)
    (fast := FastPath(dtype=dtype, channels_last=channels_last, compile=compile_unet)).check()
    auto, root = (resolve_shard() if shard == "auto" else None), out        # --shard auto: see scaleout.py
    if auto is not None:
        shard, out = auto.spec, (None if out is None else shard_dir(Path(out), auto.k, auto.n))
    (k, n), (index, masks) = parse_shard(shard), check_work(work)
    plan = plan_balance(index, masks, normal_class=(ncls := normal_class_of(work, normal_class)), ratio=target_ratio,
                        classes=classes, prompts=load_prompts(prompts), prompt_mode=prompt_mode, seed=seed,
                        max_synthetic=max_synthetic, output_format=output_format)
    items = list(plan.iter_items(k, n))
    if dry_run:
        return {"dry_run": True, "shard": f"{k}/{n}", "n_in_shard": len(items), **plan.to_dict()}
    # 2. MODEL_DIR (with its grid mapping), OUT and the source images a DICOM output needs.
    model_dir, out, fmt_root = _check_targets(work, model, out, output_format, images_root)
    model_sha, warnings, created = model_dir_sha256(model_dir), _work_warnings(model_dir, work), not out.exists()
    with folder_lock(out, "balance", what="--out"):         # one run per OUT (a second: exit 3); cleaning under it
        # 3. The run's fingerprint, and what a previous run with the same one already wrote.
        opts = {"target_ratio": float(target_ratio), "classes": list(classes or []), "prompts": str(prompts or ""),
                "prompt_mode": prompt_mode, "seed": int(seed), "steps": int(steps), "guidance": float(guidance),
                "eta": float(eta), "blend": blend, "scheduler": scheduler, "output_format": output_format,
                "shard": f"{k}/{n}", "normal_class": ncls, "geometry": _mapping(model_dir, geometry, crop_margin, resolution).to_dict(),
                "candidates": int(candidates), "scorer": scorer or "",
                "min_score": None if min_score is None else float(min_score)}
        fingerprint = {**opts, "model_sha256": model_sha, "plan_sha256": _plan_sha256(items)}
        consts = {"model": model_dir.name, "model_sha256": model_sha, "steps": str(int(steps)),
                  "guidance": repr(float(guidance)), "eta": repr(float(eta)), "format": output_format}
        prev, rows, real_ids, todo, real_todo = resume_state(out, fingerprint, force, items, index, k, consts)
        if not todo and not real_todo and prev.get("status") == "complete" \
                and (out / "manifest.csv").is_file():
            return _merged(_summary(plan, items, prev, out, generated=0, skipped=len(items), failures=[]),
                           auto, root)
        # 4. Load the model before creating anything: a bad model writes nothing (no torch before).
        t0 = time.time()
        gen, load_s = _load_generator(todo, model_dir, device=device, batch_size=batch_size, steps=steps,
                                      guidance=guidance, eta=eta, base_model=base_model, blend=blend,
                                      mapping=opts["geometry"], scheduler=scheduler, fast=fast)
        picker = None if gen is None else _picker(work, index, masks, ncls, gen, candidates, scorer, min_score)
        # 5. Real rows, then synthetic samples batch by batch (each batch appended to the resume ledger).
        job = Job(work, index, masks, out, output_format, fmt_root, consts, on_progress, created=created)
        generated, gen_s, failures = _write_outputs(job, gen, picker, fingerprint, rows, todo, real_todo,
                                                    force or not prev)
        # 6. The run record, then manifest.csv (written once, last: it means the run has finished), summary.
        record = {**_record(fingerprint, opts, work, model_dir, plan, (k, n, len(items)), generated,
                            len(items) - len(todo), failures, (load_s, gen_s, time.time() - t0)),
                  "warnings": warnings, "engine": fast.to_dict(),
                  **_selection_record(picker, rows, items, generated, gen_s)}
        atomic_write_json(out / "balance.json", record)
        write_final_manifest(out, rows)
        summary = _summary(plan, items, record, out, generated=generated, skipped=len(items) - len(todo),
                           failures=failures.items)
        if not failures.items:
            summary = _merged(summary, auto, root)    # --shard auto: merge when every shard is complete
        _raise_failures(failures, generated, len(items) - len(todo), len(todo), job, summary,
                        rejected=picker.rejected if picker is not None else 0)
        return summary


# ---- helpers -----------------------------------------------------------------------------------------------


def _merged(summary: dict[str, Any], auto: Optional[AutoShard], root: Optional[str | Path]) -> dict[str, Any]:
    """``--shard auto``: the summary with the launcher's shard and, once every shard is complete, the merge."""
    if auto is None:
        return summary
    merged = finish_shard(Path(root), auto) if auto.n > 1 else None
    return {**summary, "launcher": auto.launcher, "merged": merged}


def _load_generator(todo: list[PlanItem], model_dir: Path, **kw: Any) -> tuple[Optional[Generator], float]:
    """The loaded model (None when there is nothing to generate) and the seconds loading took; ``kw`` as for
    ``runner.Generator``, with ``mapping`` as recorded in balance.json (``GridMapping.to_dict``)."""
    from .runner import Generator

    t0 = time.time()
    kw["mapping"] = GridMapping.from_dict(kw["mapping"])
    return (Generator(model_dir, **kw) if todo else None), time.time() - t0


def _check_options(output_format: str, blend: str, steps: int, batch_size: int, guidance: float, eta: float,
                   geometry: Optional[str], crop_margin: Optional[float], resolution: Optional[int]) -> None:
    if output_format not in FORMATS:
        raise UsageError(f"--output-format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    if blend not in ("masked", "donor"):
        raise UsageError(f"--blend must be masked or donor, got {blend!r}")
    if steps < 1 or batch_size < 1 or guidance < 0 or eta < 0:
        raise UsageError("--steps and --batch-size must be >= 1, --guidance and --eta >= 0")
    if geometry is not None and geometry not in MODES:
        raise UsageError(f"--geometry must be one of {', '.join(MODES)}, got {geometry!r}")
    if (crop_margin is not None and not crop_margin >= 0) or (resolution is not None and resolution < 8):
        raise UsageError("--crop-margin must be >= 0 and --resolution >= 8")


def _mapping(model_dir: Path, geometry: Optional[str], crop_margin: Optional[float],
             resolution: Optional[int]) -> GridMapping:
    """The grid mapping MODEL_DIR was trained with, with the user's overrides (each with a warning)."""
    from ..models.modeldir import read_meta

    return mapping_for_model(read_meta(model_dir), geometry, crop_margin, resolution)


SCHEDULERS = ("ddim", "dpmsolver++", "unipc")      # = engine.SCHEDULERS (not imported here: engine imports torch)


def _check_scheduler(scheduler: str, eta: float) -> None:
    if scheduler not in SCHEDULERS:
        raise UsageError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    if scheduler != "ddim" and eta > 0:
        raise UsageError(f"--eta applies to --scheduler ddim only, got --eta {eta} with --scheduler {scheduler}")


def _check_selection(candidates: int, scorer: Optional[str]) -> Optional[str]:
    """The scorer to use: the given one, ``feature`` when K > 1 and none is given, else None (no scoring)."""
    from .select import SCORERS

    if candidates < 1:
        raise UsageError(f"--candidates must be >= 1, got {candidates}")
    if scorer is not None and scorer not in SCORERS:
        raise UsageError(f"--scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")
    return scorer or ("feature" if candidates > 1 else None)


def _picker(work: Path, index: pd.DataFrame, masks: pd.DataFrame, normal_class: str, gen: "Generator",
            candidates: int, scorer: Optional[str], min_score: Optional[float]):
    """References read once per run (training split) and, with a scorer, their features (``generate.select``)."""
    from .select import Picker, Scorer, load_references

    refs = load_references(work, index, masks, normal_class)
    encoder = gen.trained.encoder if scorer == "feature" else None
    if scorer == "feature" and encoder is None:
        raise ModelError("--scorer feature needs the model's medical encoder; use --scorer classifier")
    return Picker(refs, candidates, Scorer(scorer, encoder, refs, min_score) if scorer else None)


def _selection_record(picker, rows: dict[str, dict], items: list[PlanItem], generated: int,
                      gen_s: float) -> dict[str, Any]:
    """balance.json's ``selection`` (scorer, K, floor, references) and ``evidence`` ("k of n" per class)."""
    from .evidence import summarize

    ids = {it.sample_id for it in items}
    syn = [r for sid, r in rows.items() if sid in ids and r.get("origin") == "synthetic"]
    out: dict[str, Any] = {"evidence": summarize(syn)}
    if picker is not None:
        out["selection"] = {**picker.describe(),
                            "seconds_per_kept_sample": round(gen_s / generated, 4) if generated else None}
    return out


def _check_targets(work: Path, model: Optional[str | Path], out: Optional[str | Path], output_format: str,
                   images_root: Optional[str | Path]) -> tuple[Path, Path, Optional[Path]]:
    """(MODEL_DIR, OUT, source image root) of a real run, checked."""
    if model is None:
        raise UsageError("--model MODEL_DIR is required (or use --dry-run)")
    if out is None:
        raise UsageError("--out OUT is required (or use --dry-run)")
    model_dir, out = Path(model), Path(out)
    if out.resolve() == work.resolve() or work.resolve() in out.resolve().parents:
        raise UsageError("--out must not be WORK or inside it")
    fmt_root = Path(images_root) if images_root else images_root_of(work)
    if output_format == "dicom" and fmt_root is None:
        raise UsageError("--output-format dicom needs the source images: give --images DIR")
    return model_dir, out, fmt_root


def _plan_sha256(items: list[PlanItem]) -> str:
    return hashlib.sha256(json.dumps([list(i.__dict__.values()) for i in items]).encode()).hexdigest()


def _write_outputs(job: Job, gen: Optional[Generator], picker, fingerprint: dict, rows: dict[str, dict],
                   todo: list[PlanItem], real_todo: list[str], reset: bool) -> tuple[int, float, FailureList]:
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
            generated = _generate(job, gen, picker, todo, rows, failures)
            return generated, time.time() - t0, failures
    except BaseException:
        if job.created and not any(r.get("origin") == "synthetic" for r in rows.values()):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _generate(job: Job, gen: Generator, picker, todo: list[PlanItem], rows: dict[str, dict],
              failures: FailureList) -> int:
    """Inpaint ``todo`` batch by batch (K candidates per planned sample, each with its own seed, in the same
    engine batch of about ``batch_size`` rows); keep each sample's chosen candidate and write it, then append
    the batch to the ledger (only whole batches are listed). Adds rows and failures in place; returns the
    number of samples generated."""
    from .select import candidate_seed

    by_id = job.index.set_index("sample_id", drop=False)
    mask_of = dict(zip(job.masks["sample_id"], job.masks["mask"]))
    generated, k = 0, picker.k
    per_batch = max(1, gen.batch_size // k)
    n_batches = -(-len(todo) // per_batch)
    report(job.on_progress, "balance", 0, len(todo))
    for start in range(0, len(todo), per_batch):
        batch = todo[start:start + per_batch]
        ok, pairs = [], []
        for it in batch:
            try:
                pairs.append(_donor_pair(job.work, by_id, mask_of, it.donor_id))
                ok.append(it)
            except InputError as e:
                failures.add(it.sample_id, str(e))
        on_step = batch_steps(job.on_progress, "balance: denoising steps", start // per_batch, n_batches)
        outs = gen.inpaint([p[0] for p in pairs for _ in range(k)], [p[1] for p in pairs for _ in range(k)],
                           [it.prompt for it in ok for _ in range(k)],
                           [candidate_seed(it.seed, j) for it in ok for j in range(k)], on_step) if ok else []
        new = {}
        for i, (it, (donor, msk)) in enumerate(zip(ok, pairs)):
            used = gen.used_mask(msk)                                 # the mask generation used (w/o SMIS: hard)
            pick = picker.pick(it.label, donor, used, outs[i * k:(i + 1) * k])
            if pick.chosen is None:
                picker.rejected += 1
                failures.add(it.sample_id, f"none of its {k} candidates reached the {picker.scorer.kind} scorer's "
                             f"floor {picker.scorer.floor:g} (scores {pick.fields['candidate_scores']})")
                continue
            try:
                row = _write_sample(it, outs[i * k + pick.chosen], used, by_id.loc[it.donor_id].to_dict(), job)
                new[it.sample_id] = {**row, **pick.fields}
            except InputError as err:
                failures.add(it.sample_id, str(err))
        job.ledger.append(new.values())                   # O(batch), durable before the next batch starts
        rows.update(new)
        generated += len(new)
        report(job.on_progress, "balance", start + len(batch), len(todo))
    return generated


def _donor_pair(work: Path, by_id: pd.DataFrame, mask_of: dict, donor_id: str) -> tuple[np.ndarray, np.ndarray]:
    if donor_id not in by_id.index:
        raise InputError(f"donor {donor_id} not in index.csv")
    return load_pair(work, by_id.loc[donor_id, "image"], mask_of.get(donor_id, ""), f"donor {donor_id}")


def _write_sample(it: PlanItem, img: np.ndarray, msk: np.ndarray, donor: dict, job: Job) -> dict[str, str]:
    """Write one synthetic image and the mask generation used (each atomically); return its manifest row."""
    out = job.out
    img_rel, mask_rel = synthetic_paths(it.sample_id, it.label, job.fmt)
    write_image(out / img_rel, img, job.fmt, donor, job.fmt_root, sample_id=it.sample_id, description=it.prompt,
                mask01=msk)
    atomic_save_npy(out / mask_rel, msk.astype(np.float32))
    return {"sample_id": it.sample_id, "patient_id": donor.get("patient_id", ""), "split": "train",
            "label": it.label, "origin": "synthetic", "image": img_rel, "mask": mask_rel,
            "donor_id": it.donor_id, "prompt": it.prompt, "seed": str(it.seed), **job.consts,
            "sha256": sha256_file(out / img_rel)}


def _record(fingerprint: dict, opts: dict, work: Path, model_dir: Path, plan: BalancePlan,
            shard: tuple[int, int, int], generated: int, skipped: int, failures: FailureList,
            timings: tuple[float, float, float]) -> dict[str, Any]:
    """The content of balance.json."""
    (k, n, n_items), (load_s, gen_s, total_s) = shard, timings
    return {"status": "partial" if failures else "complete", "fingerprint": fingerprint,
            "versions": package_versions(), "options": opts,
            "inputs": {"work": str(work), "index.csv": sha256_file(work / "index.csv"),
                       "masks.csv": sha256_file(work / "masks.csv")},
            "model": {"dir": str(model_dir), "sha256": fingerprint["model_sha256"]},
            "plan": plan.to_dict(with_items=False), "shard": {"k": k, "n": n, "items": n_items},
            "generated": generated, "skipped": skipped,
            "failures": [{"sample_id": f.sample_id, "problem": f.problem} for f in failures.items],
            "timings": {"load_model_s": round(load_s, 3), "generate_s": round(gen_s, 3),
                        "total_s": round(total_s, 3)},
            "images_per_s": round(generated / gen_s, 4) if gen_s > 0 else None}


def _raise_failures(failures: FailureList, generated: int, skipped: int, n_todo: int, job: Job,
                    summary: dict[str, Any], rejected: int = 0) -> None:
    """InputError when nothing could be made for bad inputs (a new OUT is removed), PartialFailure when some
    samples failed or were rejected by the selection floor (``rejected`` of the failures; all listed)."""
    if not failures:
        return
    if generated == 0 and not skipped and rejected < len(failures):
        if job.created:
            shutil.rmtree(job.out, ignore_errors=True)
        raise InputError(f"no synthetic sample could be made; first: {failures.items[0]}")
    raise PartialFailure(f"{len(failures)} of {n_todo} synthetic samples failed", failures.items, summary)


def _work_warnings(model_dir: Path, work: Path) -> list[str]:
    """A warning (stderr and balance.json) when MODEL_DIR was trained on another WORK (fingerprints differ)."""
    from ..models.modeldir import read_meta, work_mismatch

    msg = work_mismatch(read_meta(model_dir), work)
    if msg:
        log.warning("%s: %s", model_dir.name, msg)
    return [msg] if msg else []


def _summary(plan: BalancePlan, items: list[PlanItem], record: dict, out: Path, *, generated: int,
             skipped: int, failures: list) -> dict[str, Any]:
    return {"out": str(out), "manifest": str(out / "manifest.csv"), "balance_json": str(out / "balance.json"),
            "normal_class": plan.normal_class, "ratio": plan.ratio, "counts_before": plan.counts_before,
            "to_generate": plan.to_generate, "counts_after": plan.counts_after,
            "shard": record.get("options", {}).get("shard", ""), "in_shard": len(items), "generated": generated,
            "skipped": skipped, "failed": len(failures), "timings": record.get("timings", {}),
            "images_per_s": record.get("images_per_s"), "warnings": record.get("warnings", []),
            "evidence": record.get("evidence", {}), "selection": record.get("selection")}

"""``balance``: WORK + MODEL_DIR -> OUT/ with synthetic diseased samples, manifest.csv and balance.json.

OUT layout::

    manifest.csv                      real rows (all splits) + synthetic rows (manifest.MANIFEST_COLUMNS)
    balance.json                      run record: fingerprint, options, counts before/after, timings, images/s
    real/{sample_id}.png              the real normalized slice (16-bit PNG of WORK/slices, [0,1] -> 0..65535)
    real/{sample_id}_mask.npy         its soft mask (when masks.csv has one)
    synthetic/{class}/{id}.png|.nii.gz|.dcm   the synthetic image (--output-format)
    synthetic/{class}/{id}_mask.npy   the soft mask used (the donor's, float32 (H, W) in [0,1])

Real rows reference copies inside OUT (not WORK) so that OUT is a self-contained dataset. With ``--shard K/N``
only shard 1 writes the real rows; ``manifest merge`` joins the shards.

Resume: the manifest is the ledger. It is rewritten atomically after every batch and lists only samples whose
image and mask were fully written (each by temp file + rename), so a killed run never lists a half-written image.
A rerun with the same options skips every listed sample whose file still has its recorded sha256, and when
nothing is left to do it writes nothing at all. A different set of options in an existing OUT is refused unless
``force``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import FailureList, InputError, ModelError, PartialFailure, UsageError
from ..fsutil import atomic_save_npy, atomic_write_json, load_npy, sha256_file
from ..manifest import MANIFEST_COLUMNS, read_manifest, write_manifest
from ..progress import ProgressFn, report
from ..workdir import read_index, read_masks
from .plan import BalancePlan, PlanItem, class_slug, parse_shard, plan_balance, shard_items
from .prompts import load_prompts

log = logging.getLogger("medsoft_aug.generate.stage")

FORMATS = {"png": ".png", "nifti": ".nii.gz", "dicom": ".dcm"}
_MODEL_FILES = ("medsoft_model.json", "msc.safetensors", "adapter.safetensors", "unet.safetensors")
# Manifest fields that must match for a listed synthetic sample to count as done.
_SAME = ("label", "donor_id", "prompt", "seed", "model_sha256", "steps", "guidance", "eta", "format")


# ---- inputs ------------------------------------------------------------------------------------------------
def normal_class_of(work: Path, given: Optional[str]) -> str:
    if given:
        return given
    p = work / "ingest.json"
    if p.is_file():
        try:
            return str(json.loads(p.read_text("utf-8")).get("normal_class") or "normal")
        except ValueError:
            raise InputError(f"{p} is not valid JSON") from None
    return "normal"


def check_work(work: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """index.csv + masks.csv, checked to belong together (masks built from this very index)."""
    if not work.is_dir():
        raise InputError(f"WORK folder {work} not found")
    index, masks = read_index(work), read_masks(work)
    rec = work / "masks.json"
    if rec.is_file():
        try:
            built_from = json.loads(rec.read_text("utf-8")).get("inputs", {}).get("index.csv")
        except ValueError:
            raise InputError(f"{rec} is not valid JSON") from None
        if built_from and built_from != sha256_file(work / "index.csv"):
            raise InputError(f"{work}/index.csv changed since the masks were built: rerun `medsoft-aug masks build`")
    stray = sorted(set(masks["sample_id"]) - set(index["sample_id"]))
    if stray:
        raise InputError(f"masks.csv lists {len(stray)} sample(s) not in index.csv (e.g. {stray[0]}): "
                         "rerun `medsoft-aug masks build`")
    return index, masks


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
            base_model: Optional[str] = None, blend: str = "masked",
            on_progress: ProgressFn = None) -> dict[str, Any]:
    """Balance every disease class of WORK's train split to ``target_ratio`` x normal by soft-mask inpainting.

    Returns a JSON-ready summary (``dry_run``: the plan, no model loaded, nothing written). Raises UsageError
    (bad options), InputError/ModelError (bad WORK, model or OUT; nothing written), PartialFailure (some samples
    failed; the rest are written and listed). ``base_model`` overrides the base reference recorded in MODEL_DIR
    (e.g. the same SD1.5 in another folder); its hash must match the recorded one. ``blend``: the latent kept
    outside the mask in Eq. 7, ``masked`` = VAE(I_m) (the paper) or ``donor`` = VAE(x0) (see engine.SamplingOptions).
    """
    work = Path(work)
    if output_format not in FORMATS:
        raise UsageError(f"--output-format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    if blend not in ("masked", "donor"):
        raise UsageError(f"--blend must be masked or donor, got {blend!r}")
    if steps < 1 or batch_size < 1 or guidance < 0 or eta < 0:
        raise UsageError("--steps and --batch-size must be >= 1, --guidance and --eta >= 0")
    k, n = parse_shard(shard)
    index, masks = check_work(work)
    ncls = normal_class_of(work, normal_class)
    plan = plan_balance(index, masks, normal_class=ncls, ratio=target_ratio, classes=classes,
                        prompts=load_prompts(prompts), prompt_mode=prompt_mode, seed=seed)
    items = shard_items(plan.items, k, n)
    if dry_run:
        return {"dry_run": True, "shard": f"{k}/{n}", "n_in_shard": len(items), **plan.to_dict()}
    if model is None:
        raise UsageError("--model MODEL_DIR is required (or use --dry-run)")
    if out is None:
        raise UsageError("--out OUT is required (or use --dry-run)")
    model_dir, out = Path(model), Path(out)
    if out.resolve() == work.resolve() or work.resolve() in out.resolve().parents:
        raise UsageError("--out must not be WORK or inside it")
    model_sha = model_dir_sha256(model_dir)
    fmt_root = Path(images_root) if images_root else _images_root(work)
    if output_format == "dicom" and fmt_root is None:
        raise UsageError("--output-format dicom needs the source images: give --images DIR")

    opts = {"target_ratio": float(target_ratio), "classes": list(classes or []), "prompts": str(prompts or ""),
            "prompt_mode": prompt_mode, "seed": int(seed), "steps": int(steps), "guidance": float(guidance),
            "eta": float(eta), "blend": blend, "output_format": output_format, "shard": f"{k}/{n}",
            "normal_class": ncls}
    fingerprint = {**{k_: v for k_, v in opts.items()}, "model_sha256": model_sha,
                   "plan_sha256": hashlib.sha256(json.dumps([list(i.__dict__.values()) for i in items])
                                                 .encode()).hexdigest()}
    prev = _previous_run(out, fingerprint, force)
    rows = {} if force else _verified_rows(out, prev)
    consts = {"model": model_dir.name, "model_sha256": model_sha, "steps": str(int(steps)),
              "guidance": repr(float(guidance)), "eta": repr(float(eta)), "format": output_format}
    real_ids = list(index["sample_id"]) if k == 1 else []
    todo = [it for it in items if not _done(rows.get(it.sample_id), it, consts)]
    real_todo = [s for s in real_ids if s not in rows]
    if not todo and not real_todo and prev.get("status") == "complete":
        return _summary(plan, items, prev, out, generated=0, skipped=len(items), failures=[])

    t0 = time.time()
    gen = None
    if todo:                                      # load the model before creating anything: a bad model writes nothing
        from .runner import Generator

        gen = Generator(model_dir, device=device, batch_size=batch_size, steps=steps, guidance=guidance, eta=eta,
                        base_model=base_model, blend=blend)
    load_s = time.time() - t0
    created = not out.exists()
    failures = FailureList()
    gen_s, generated = 0.0, 0
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.rglob(".*.tmp"):          # temp files of a killed run (never listed anywhere)
            stale.unlink(missing_ok=True)
        atomic_write_json(out / "balance.json", {"status": "running", "fingerprint": fingerprint})
        keep = {it.sample_id for it in items} | set(real_ids)
        rows = {s: r for s, r in rows.items() if s in keep}
        _write_real_rows(work, index, masks, out, real_todo, rows, on_progress)
        write_manifest(out / "manifest.csv", _frame(rows))
        if gen is not None:
            t_gen = time.time()
            for done, new_rows, fails in gen.run(work, index, masks, todo, out, output_format, fmt_root, consts):
                rows.update(new_rows)
                for f in fails:
                    failures.add(f.sample_id, f.problem)
                generated += len(new_rows)
                write_manifest(out / "manifest.csv", _frame(rows))
                report(on_progress, "balance", done, len(todo))
            gen_s = time.time() - t_gen
    except BaseException:
        if created and not any(r.get("origin") == "synthetic" for r in rows.values()):
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    record = {"status": "partial" if failures else "complete", "fingerprint": fingerprint,
              "versions": _versions(), "options": opts,
              "inputs": {"work": str(work), "index.csv": sha256_file(work / "index.csv"),
                         "masks.csv": sha256_file(work / "masks.csv")},
              "model": {"dir": str(model_dir), "sha256": model_sha},
              "plan": plan.to_dict(with_items=False), "shard": {"k": k, "n": n, "items": len(items)},
              "generated": generated, "skipped": len(items) - len(todo),
              "failures": [{"sample_id": f.sample_id, "problem": f.problem} for f in failures.items],
              "timings": {"load_model_s": round(load_s, 3), "generate_s": round(gen_s, 3),
                          "total_s": round(time.time() - t0, 3)},
              "images_per_s": round(generated / gen_s, 4) if gen_s > 0 else None}
    atomic_write_json(out / "balance.json", record)
    summary = _summary(plan, items, record, out, generated=generated, skipped=len(items) - len(todo),
                       failures=failures.items)
    if failures:
        if generated == 0 and not (len(items) - len(todo)):
            if created:
                import shutil

                shutil.rmtree(out, ignore_errors=True)
            raise InputError(f"no synthetic sample could be made; first: {failures.items[0]}")
        raise PartialFailure(f"{len(failures)} of {len(todo)} synthetic samples failed", failures.items, summary)
    return summary


# ---- helpers -----------------------------------------------------------------------------------------------
def _versions() -> dict[str, Optional[str]]:
    from importlib import metadata

    out: dict[str, Optional[str]] = {"medsoft_aug": __version__}
    for dist in ("torch", "diffusers", "transformers", "open_clip_torch", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _images_root(work: Path) -> Optional[Path]:
    p = work / "ingest.json"
    try:
        root = json.loads(p.read_text("utf-8")).get("options", {}).get("images") if p.is_file() else None
    except ValueError:
        root = None
    return Path(root) if root else None


def _previous_run(out: Path, fingerprint: dict, force: bool) -> dict:
    p = out / "balance.json"
    if not p.is_file():
        if out.exists() and any(out.iterdir()) and not force:
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
    """Manifest rows of the previous run whose files still hash to the recorded sha256."""
    if not prev or not (out / "manifest.csv").is_file():
        return {}
    rows = {}
    for r in read_manifest(out / "manifest.csv").to_dict("records"):
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


def _write_real_rows(work: Path, index: pd.DataFrame, masks: pd.DataFrame, out: Path, ids: list[str],
                     rows: dict[str, dict], on_progress: ProgressFn) -> None:
    """Copy real slices (16-bit PNG) and their soft masks into OUT/real/ and add their manifest rows."""
    if not ids:
        return
    from .writers import write_png16

    mask_of = dict(zip(masks["sample_id"], masks["mask"].where(masks.get("status", "ok") == "ok", "")))
    by_id = index.set_index("sample_id", drop=False)
    for i, sid in enumerate(ids):
        r = by_id.loc[sid]
        src = work / r["image"]
        if not src.is_file():
            raise InputError(f"{sid}: slice {r['image']} listed in index.csv not found in WORK")
        img_rel, mask_rel = f"real/{sid}.png", ""
        write_png16(out / img_rel, load_npy(src))
        if mask_of.get(sid) and (work / mask_of[sid]).is_file():
            mask_rel = f"real/{sid}_mask.npy"
            atomic_save_npy(out / mask_rel, load_npy(work / mask_of[sid]).astype(np.float32))
        rows[sid] = {c: "" for c in MANIFEST_COLUMNS} | {
            "sample_id": sid, "patient_id": r.get("patient_id", ""), "split": r["split"], "label": r["label"],
            "origin": "real", "image": img_rel, "mask": mask_rel, "format": "png",
            "sha256": sha256_file(out / img_rel)}
        report(on_progress, "copy real samples", i + 1, len(ids))


def synthetic_paths(it: PlanItem, output_format: str) -> tuple[str, str]:
    """(image, mask) paths of a synthetic sample relative to OUT."""
    base = f"synthetic/{class_slug(it.label)}/{it.sample_id}"
    return base + FORMATS[output_format], base + "_mask.npy"


def _summary(plan: BalancePlan, items: list[PlanItem], record: dict, out: Path, *, generated: int,
             skipped: int, failures: list) -> dict[str, Any]:
    return {"out": str(out), "manifest": str(out / "manifest.csv"), "balance_json": str(out / "balance.json"),
            "normal_class": plan.normal_class, "ratio": plan.ratio, "counts_before": plan.counts_before,
            "to_generate": plan.to_generate, "counts_after": plan.counts_after,
            "shard": record.get("options", {}).get("shard", ""), "in_shard": len(items), "generated": generated,
            "skipped": skipped, "failed": len(failures), "timings": record.get("timings", {}),
            "images_per_s": record.get("images_per_s")}

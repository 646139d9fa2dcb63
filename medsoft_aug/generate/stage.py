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
arrays (through the grid mapping MODEL_DIR was trained with, ``geometry``), and ``batches`` writes them through
``writers``. Real rows reference copies inside OUT (not WORK) so that OUT is a self-contained dataset. With
``--shard K/N`` only shard 1 writes the real rows; ``manifest merge`` joins the shards.

The stage's pieces: ``options`` (every option, checked in one ``BalanceOptions.check_inputs``), ``plan`` (who
gets generated), ``outdir`` (resume state, real-row copies, the final manifest), ``batches`` (batch by batch
generation and writing), ``record`` (balance.json, the summary, the failure errors).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..errors import ModelError
from ..fsutil import atomic_write_json, sha256_file
from ..geometry import GridMapping, mapping_for_model
from ..locks import folder_lock
from ..progress import ProgressFn
from .batches import write_outputs
from .options import BalanceOptions, Inputs
from .outdir import Job, resume_state, write_final_manifest
from .plan import PlanItem, plan_balance
from .prompts import load_prompts
from .record import raise_failures, run_record, selection_record, summary
from .scaleout import finish_shard

if TYPE_CHECKING:
    from .runner import Generator
    from .select import Picker

log = logging.getLogger("medsoft_aug.generate.stage")

_MODEL_FILES = ("medsoft_model.json", "msc.safetensors", "adapter.safetensors", "unet.safetensors")


# ---- inputs ------------------------------------------------------------------------------------------------
def model_dir_sha256(model_dir: Path) -> str:
    """Content hash of a MODEL_DIR: its config and weight files (the base model is pinned inside the config).

    A weight file's hash is the one medsoft_model.json records for it when it records one (loading the model
    checks the file against it, ``modeldir.load_weights``): each weight file is read and hashed once per run."""
    meta_file = model_dir / "medsoft_model.json"
    if not meta_file.is_file():
        raise ModelError(f"model folder {model_dir} not found or has no medsoft_model.json: run `medsoft-aug train`")
    try:
        recorded = json.loads(meta_file.read_text("utf-8")).get("files") or {}
    except (OSError, ValueError, AttributeError):
        recorded = {}                                   # read_meta names the problem when the model is loaded
    h = hashlib.sha256()
    for name in _MODEL_FILES:
        if (model_dir / name).is_file():
            sha = recorded.get(name) if name != "medsoft_model.json" and isinstance(recorded, dict) else None
            h.update(f"{name}:{sha if isinstance(sha, str) else sha256_file(model_dir / name)}\n".encode())
    return h.hexdigest()


# ---- the stage ---------------------------------------------------------------------------------------------
def balance(work: str | Path, model: Optional[str | Path] = None, out: Optional[str | Path] = None,
            options: Optional[BalanceOptions] = None, *, on_progress: ProgressFn = None,
            **overrides: Any) -> dict[str, Any]:
    """Balance every disease class of WORK's train split to ``target_ratio`` x normal by soft-mask inpainting,
    with MODEL_DIR ``model``, into OUT ``out`` (both needed unless ``dry_run``).

    ``options`` (a :class:`~medsoft_aug.generate.options.BalanceOptions`, every option documented there) and/or
    its fields as keyword arguments (``balance(w, m, o, steps=20)``). Returns a JSON-ready summary (``dry_run``:
    the plan only). Raises UsageError, InputError / ModelError (bad options, WORK, model or OUT; nothing written),
    PartialFailure (some samples failed, or none of a sample's candidates reached the floor; the rest written
    and listed). Every synthetic row carries its evidence."""
    # 1. Options, WORK, MODEL_DIR and OUT, checked before any work (BalanceOptions.check_inputs).
    opts = replace(options or BalanceOptions(), **overrides)
    inp = opts.check_inputs(work, model, out)
    # 2. The plan (a dry run stops here: no model loaded, nothing written).
    plan = plan_balance(inp.index, inp.masks, normal_class=inp.normal_class, ratio=opts.target_ratio,
                        classes=opts.classes, prompts=load_prompts(opts.prompts), prompt_mode=opts.prompt_mode,
                        seed=opts.seed, max_synthetic=opts.max_synthetic, output_format=opts.output_format,
                        negative_prompts=opts.negative_prompts)
    items = list(plan.iter_items(inp.k, inp.n))
    if opts.dry_run:
        return {"dry_run": True, "shard": f"{inp.k}/{inp.n}", "n_in_shard": len(items), **plan.to_dict()}
    model_sha, warnings = model_dir_sha256(inp.model_dir), _work_warnings(inp.model_dir, inp.work)
    created, out = not inp.out.exists(), inp.out
    with folder_lock(out, "balance", what="--out"):         # one run per OUT (a second: exit 3); cleaning under it
        # 3. The run's fingerprint, and what a previous run with the same one already wrote.
        recorded = opts.fingerprint_options(inp, _mapping(inp.model_dir, opts).to_dict())
        fingerprint = {**recorded, "model_sha256": model_sha, "plan_sha256": _plan_sha256(items)}
        consts = opts.row_constants(inp.model_dir.name, model_sha)
        prev, rows, _, todo, real_todo = resume_state(out, fingerprint, opts.force, items, inp.index, inp.k, consts)
        if not todo and not real_todo and prev.get("status") == "complete" and (out / "manifest.csv").is_file():
            return _merged(summary(plan, items, prev, out, generated=0, skipped=len(items), failures=[]), inp)
        # 4. Load the model before creating anything: a bad model writes nothing (no torch before).
        t0 = time.time()
        gen, load_s = _load_generator(todo, inp.model_dir, opts, recorded["geometry"])
        picker = None if gen is None else _picker(inp, gen, opts)
        # 5. Real rows, then synthetic samples batch by batch (each batch appended to the resume ledger).
        job = Job(inp.work, inp.index, inp.masks, out, opts.output_format, inp.fmt_root, consts, on_progress,
                  created=created)
        generated, gen_s, failures = write_outputs(job, gen, picker, fingerprint, rows, todo, real_todo,
                                                   opts.force or not prev)
        # 6. The run record, then manifest.csv (written once, last: it means the run has finished), summary.
        skipped = len(items) - len(todo)
        record = {**run_record(fingerprint, recorded, inp.work, inp.model_dir, plan, (inp.k, inp.n, len(items)),
                               generated, skipped, failures, (load_s, gen_s, time.time() - t0)),
                  "warnings": warnings, "engine": opts.fast.to_dict(),
                  "batch": {"requested": opts.batch_request, **(gen.batch if gen is not None else {})},
                  **selection_record(picker, rows, items, generated, gen_s)}
        atomic_write_json(out / "balance.json", record)
        write_final_manifest(out, rows)
        result = summary(plan, items, record, out, generated=generated, skipped=skipped, failures=failures.items)
        if not failures.items:
            result = _merged(result, inp)    # --shard auto: merge when every shard is complete
        raise_failures(failures, generated, skipped, len(todo), job, result,
                       rejected=picker.rejected if picker is not None else 0)
        return result


# ---- helpers -----------------------------------------------------------------------------------------------
def _merged(result: dict[str, Any], inp: Inputs) -> dict[str, Any]:
    """``--shard auto``: the summary with the launcher's shard and, once every shard is complete, the merge."""
    if inp.auto is None:
        return result
    merged = finish_shard(inp.root, inp.auto) if inp.auto.n > 1 else None
    return {**result, "launcher": inp.auto.launcher, "merged": merged}


def _load_generator(todo: list[PlanItem], model_dir: Path, opts: BalanceOptions,
                    mapping: dict[str, Any]) -> tuple[Optional[Generator], float]:
    """The loaded model (None when there is nothing to generate) and the seconds loading took; ``mapping`` as
    recorded in balance.json (``GridMapping.to_dict``)."""
    from .runner import Generator

    t0 = time.time()
    if not todo:
        return None, time.time() - t0
    gen = Generator(model_dir, device=opts.device, batch_size=opts.batch_request, steps=opts.steps,
                    guidance=opts.guidance, eta=opts.eta, base_model=opts.base_model, blend=opts.blend,
                    mapping=GridMapping.from_dict(mapping), scheduler=opts.scheduler, fast=opts.fast,
                    deepcache_interval=opts.deepcache_interval, batch_limit=len(todo) * opts.candidates)
    return gen, time.time() - t0


def _mapping(model_dir: Path, opts: BalanceOptions) -> GridMapping:
    """The grid mapping MODEL_DIR was trained with, with the user's overrides (each with a warning)."""
    from ..models.modeldir import read_meta

    return mapping_for_model(read_meta(model_dir), opts.geometry, opts.crop_margin, opts.resolution)


def _picker(inp: Inputs, gen: Generator, opts: BalanceOptions) -> Picker:
    """References read once per run (training split) and, with a scorer, their features (``generate.select``)."""
    from .select import Picker, Scorer, load_references

    scorer = opts.scorer_kind
    refs = load_references(inp.work, inp.index, inp.masks, inp.normal_class)
    encoder = gen.trained.encoder if scorer == "feature" else None
    if scorer == "feature" and encoder is None:
        raise ModelError("--scorer feature needs the model's medical encoder; use --scorer classifier")
    return Picker(refs, opts.candidates, Scorer(scorer, encoder, refs, opts.min_score) if scorer else None)


def _plan_sha256(items: list[PlanItem]) -> str:
    """The items' hash; an empty ``negative_prompt`` (the last field) is left out, so plans made before
    --negative-prompts existed keep their hash (and their OUT resumes)."""
    rows = [list(i.__dict__.values())[:None if i.negative_prompt else -1] for i in items]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _work_warnings(model_dir: Path, work: Path) -> list[str]:
    """A warning (stderr and balance.json) when MODEL_DIR was trained on another WORK (fingerprints differ)."""
    from ..models.modeldir import read_meta, work_mismatch

    msg = work_mismatch(read_meta(model_dir), work)
    if msg:
        log.warning("%s: %s", model_dir.name, msg)
    return [msg] if msg else []

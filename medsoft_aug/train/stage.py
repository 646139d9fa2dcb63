"""``train``: WORK -> MODEL_DIR (MSC pretraining, Eq. 4; then SMIS adapter training, Eq. 5-6).

Stages: "msc" trains the Medical Semantic Controller on training-split diseased samples and writes
MODEL_DIR/msc.safetensors; "smis" trains the decoupled cross-attention with the frozen MSC and writes
adapter.safetensors and medsoft_model.json (the complete model); "all" runs both. ``--no-msc`` (paper's "w/o MSC")
skips the MSC and the adapter: text-only conditioning, training the text cross-attention W_k/W_v of the same layers
(or the whole UNet with train_unet="full"). ``mask_mode="hard"`` (paper's "w/o SMIS") thresholds the soft masks.

Works unchanged under ``accelerate launch`` (DDP): every process trains, only the main process writes files.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch

from ..batchsize import batch_size_error, parse_batch_size
from ..errors import DeviceError, InputError, UsageError
from ..fsutil import atomic_write_json
from ..geometry import MODES, GridMapping
from ..locks import folder_lock
from ..progress import ProgressFn
from .loop import LoopConfig, list_checkpoints, make_accelerator, run_task

log = logging.getLogger("medsoft_aug.train.stage")

STAGES = ("all", "msc", "smis")
MSC_DONE = "msc_done.json"


@dataclass
class TrainResult:
    model_dir: Path
    stage: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)    # per-stage LoopResult
    files: dict[str, str] = field(default_factory=dict)                 # written weight file -> sha256
    complete: bool = False                                              # medsoft_model.json written
    skipped: bool = False                                               # already trained with the same options

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_dir": str(self.model_dir)}


@dataclass
class TrainOptions:
    """Everything ``train`` can be told (recorded in medsoft_model.json), validated in one place: ``check_inputs``.

    ``max_steps`` optimizer steps per stage (``msc_steps`` overrides it for the MSC stage); ``batch_size`` per
    process and micro-batch, or ``"auto"`` (``autobatch.py``: probed per stage on CUDA, 4 elsewhere, the recorded
    size on resume; ``grad_accum`` multiplies it). ``resume``: None, "latest" or a checkpoint folder. ``device``:
    "cpu" forces the CPU, otherwise accelerate picks (CUDA when present). ``force`` retrains over an existing
    MODEL_DIR. ``geometry`` / ``crop_margin``: the native-to-model grid mapping (``medsoft_aug.geometry``),
    recorded in MODEL_DIR so that generation uses the same. Speed options (``loop.py``): ``mixed_precision``,
    ``gradient_checkpointing``, ``compile`` (the UNet, SMIS stage), ``num_workers`` (loader processes),
    ``cache_batch`` (samples per batch when the frozen VAE / encoder / MSC features are cached before the first
    step).
    """

    stage: str = "all"                  # all | msc | smis
    max_steps: int = 1000
    msc_steps: Optional[int] = None
    base_model: str = "tiny"
    encoder: str = "tiny"
    gamma: float = 1.0
    train_unet: str = "none"            # none | full
    no_msc: bool = False
    mask_mode: str = "soft"             # soft | hard
    resolution: Optional[int] = None
    geometry: str = "crop"              # crop | pad (geometry.MODES)
    crop_margin: float = 0.25
    batch_size: int | str = 4           # or "auto" (autobatch.py)
    grad_accum: int = 1
    mixed_precision: str = "no"         # no | fp16 | bf16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    checkpoints_keep: int = 2
    resume: Optional[str] = None
    seed: int = 0
    device: Optional[str] = None
    force: bool = False
    normal_class: Optional[str] = None
    num_workers: int = 0
    compile: bool = False
    cache_batch: int = 8

    def loop_config(self) -> LoopConfig:
        return LoopConfig(max_steps=self.max_steps, batch_size=parse_batch_size(self.batch_size),
                          grad_accum=self.grad_accum, mixed_precision=self.mixed_precision,
                          gradient_checkpointing=self.gradient_checkpointing,
                          checkpoint_every=self.checkpoint_every, checkpoints_keep=self.checkpoints_keep,
                          seed=self.seed, num_workers=self.num_workers, compile=self.compile)

    def check_inputs(self, work: Path, out: Path) -> None:
        """Every option, WORK's tables and the MODEL_DIR path, before anything is created or loaded.

        Raises UsageError (exit 2) for bad options, InputError (exit 3) for a bad WORK or an ``out`` that is
        (or lies under) an existing file.
        """
        checks = [(self.stage in STAGES, f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}"),
                  (self.train_unet in ("none", "full"), f"--train-unet must be none or full, got {self.train_unet!r}"),
                  (self.mask_mode in ("soft", "hard"), f"--mask-mode must be soft or hard, got {self.mask_mode!r}"),
                  (self.gamma >= 0, f"--gamma must be >= 0, got {self.gamma}"),
                  (self.msc_steps is None or self.msc_steps >= 1, "--msc-steps must be >= 1"),
                  (self.resolution is None or self.resolution >= 1, "--resolution must be >= 1"),
                  (self.geometry in MODES, f"--geometry must be one of {', '.join(MODES)}, got {self.geometry!r}"),
                  (self.crop_margin >= 0, f"--crop-margin must be >= 0, got {self.crop_margin}"),
                  (self.cache_batch >= 1, f"--cache-batch must be >= 1, got {self.cache_batch}"),
                  (self.resume is None or not self.force, "--resume and --force contradict each other"),
                  (not (self.no_msc and self.stage == "msc"), "--no-msc has no MSC stage to run")]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        if batch_size_error(self.batch_size):
            raise UsageError(batch_size_error(self.batch_size))
        self.loop_config().validate()
        from ..workdir import read_index, read_masks

        read_index(work), read_masks(work)
        from ..models.base import check_base_model
        from ..models.encoders import check_encoder

        check_base_model(self.base_model)             # configs and headers only: a wrong model fails in seconds
        if not self.no_msc:
            check_encoder(self.encoder)
        for p in (out, *out.parents):
            if p.exists() and not p.is_dir():
                raise InputError(f"--out {out}: {p} is an existing file, not a folder: choose another --out")
            if p.is_dir():
                break

    def record(self) -> dict[str, Any]:
        """The arguments recorded in MODEL_DIR (a rerun with equal ones is skipped): local folders absolute."""
        keys = ("stage", "max_steps", "msc_steps", "base_model", "encoder", "gamma", "train_unet", "no_msc",
                "mask_mode", "resolution", "geometry", "crop_margin", "batch_size", "grad_accum", "mixed_precision",
                "gradient_checkpointing", "seed", "normal_class", "compile", "cache_batch", "num_workers")
        rec = {k: getattr(self, k) for k in keys}
        rec["batch_size"] = parse_batch_size(self.batch_size)         # "8" from the CLI is recorded as 8
        rec.update(base_model=_ref(self.base_model), encoder=None if self.no_msc else _ref(self.encoder))
        return rec


# Recorded arguments added after MODEL_DIRs without them were written (a missing one reads as this default), and
# those that cannot change the weights (a rerun differing only in them is still "the same options").
RECORD_DEFAULTS = {"compile": False, "cache_batch": 8, "num_workers": 0}
NO_EFFECT = ("stage", "num_workers")


def same_options(old: dict, new: dict) -> bool:
    """Whether a recorded MODEL_DIR's arguments ``old`` equal ``new`` for everything that shapes the weights."""
    def norm(d):
        return {k: v for k, v in {**RECORD_DEFAULTS, **d}.items() if k not in NO_EFFECT}
    return norm(old) == norm(new)


def _ref(ref: str) -> str:
    """Local folders and files (single-file checkpoints) are recorded as absolute paths; 'tiny' and hub ids as
    given."""
    p = Path(ref).expanduser()
    return str(p.resolve()) if p.exists() else ref


def adapter_seed(seed: int) -> int:
    """Seed of the adapter's W'_k initialisation, derived from the run seed (same in every process and resume)."""
    h = hashlib.sha256(f"medsoft-aug:adapter-init:{int(seed)}".encode()).digest()
    return int.from_bytes(h[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def train(work: str | Path, out: str | Path, options: Optional[TrainOptions] = None, *,
          on_progress: ProgressFn = None, **overrides: Any) -> TrainResult:
    """Train a MedSoft-Diffusion model on the ingested, masked WORK folder; write MODEL_DIR ``out``.

    ``options`` (a :class:`TrainOptions`) and/or its fields as keyword arguments (``train(w, m, max_steps=2)``).
    Raises UsageError (exit 2) for bad options, InputError/ModelError (exit 3) for bad WORK, models or ``out``;
    all checked before any model loads or any file is created.
    """
    # 1. options, checked before any work
    opts = replace(options or TrainOptions(), **overrides)
    work, out = Path(work), Path(out)
    opts.check_inputs(work, out)
    # 2. one run per MODEL_DIR (a second is refused, exit 3); an existing MODEL_DIR: skip (same options,
    #    complete), refuse, or clear (--force)
    created = not out.exists()
    with folder_lock(out, "train", what="MODEL_DIR"):
        args = opts.record()
        done = _existing(out, args, opts)
        if done is not None:
            return done
        # 3. train; a failure before anything resumable exists leaves no half-made MODEL_DIR
        try:
            return _train(work, out, opts, args, on_progress)
        except BaseException:
            if created and out.is_dir() and not any(out.rglob("trainer_state.json")) \
                    and not (out / "checkpoints" / MSC_DONE).is_file():
                shutil.rmtree(out, ignore_errors=True)
            raise


def _train(work: Path, out: Path, opts: TrainOptions, args: dict, on_progress: ProgressFn) -> TrainResult:
    # 1. accelerator (the mixed precision checked against its device), base model (hashed before any weight is
    #    touched), resolution
    loop_cfg = opts.loop_config()
    acc = _accelerator(loop_cfg, out, opts.device)
    from ..models.base import load_base_model

    base = load_base_model(opts.base_model, device=acc.device)
    base_info = {**base.describe(), "ref": args["base_model"]}
    res = int(opts.resolution or base.resolution)
    multiple = base.vae_scale_factor * 2 ** (len(base.unet.config.block_out_channels) - 1)
    if res < multiple or res % multiple:
        raise UsageError(f"--resolution must be a positive multiple of {multiple} for this base model, got {res}")
    from .data import SliceDataset

    mapping = GridMapping(res, opts.geometry, float(opts.crop_margin))

    def data(split: str, diseased_only: bool) -> SliceDataset:
        return SliceDataset(work, split, res, opts.mask_mode, diseased_only=diseased_only,
                            normal_class=opts.normal_class, mapping=mapping)

    # 2. MSC stage (Eq. 4): train it, or load the one a previous --stage msc run left
    result = TrainResult(model_dir=out, stage=opts.stage)
    enc = msc = None
    if not opts.no_msc:
        from ..models.encoders import load_encoder

        enc = load_encoder(opts.encoder, device=acc.device)
        if opts.stage in ("all", "msc"):
            msc_args = {k: args[k] for k in ("encoder", "mask_mode", "batch_size", "grad_accum", "seed",
                                             "mixed_precision", "normal_class", "geometry", "crop_margin",
                                             "cache_batch")}
            msc_args.update(resolution=res, steps=opts.msc_steps or opts.max_steps)
            msc = _msc_stage(acc, enc, data, out, loop_cfg, msc_args, opts.resume, on_progress, result)
        else:
            msc = _load_msc(out, enc, acc.device)
        if opts.stage == "msc":
            return result
    # 3. SMIS stage (Eq. 5-6) with the frozen MSC; the adapter's initialisation derives from the run seed
    train_set, val_set = data("train", False), data("val", False)
    if len(train_set) == 0:
        raise InputError(f"{work}: no training-split samples with a usable mask")
    smis_task, adapter_info = _smis_task(base, enc, msc, opts)
    acc.free_memory()
    acc.project_configuration.set_directories(str(out / "checkpoints" / "smis"))
    acc.project_configuration.iteration = 0
    r = run_task(smis_task, train_set, accelerator=acc, config=loop_cfg, val_dataset=val_set, resume=opts.resume,
                 on_progress=on_progress)
    result.stages["smis"] = asdict(r)
    # 4. MODEL_DIR (main process only), medsoft_model.json last
    if acc.is_main_process:
        _write_model(out, smis_task, base, base_info, enc, msc, adapter_info, res, args, loop_cfg, work,
                     result, train_set.normal_class)
    acc.wait_for_everyone()
    result.complete = True
    return result


def _accelerator(cfg: LoopConfig, out: Path, device: Optional[str]):
    """The run's accelerator (checkpoints of the MSC stage first); DeviceError (exit 3) when its device cannot run
    ``cfg.mixed_precision``: fp16 needs CUDA, bf16 a CPU or a GPU with bf16 support."""
    try:
        acc = make_accelerator(cfg, out / "checkpoints" / "msc", cpu=(device == "cpu"))
    except ValueError as e:                     # accelerate: "bf16 mixed precision requires ... a supported device"
        raise DeviceError(f"--mixed-precision {cfg.mixed_precision} is not supported on this machine ({e}): "
                          "use --mixed-precision no") from None
    if cfg.mixed_precision == "fp16" and acc.device.type != "cuda":
        raise DeviceError(f"--mixed-precision fp16 needs a CUDA GPU (running on {acc.device.type}): use bf16 or no")
    return acc


def _existing(out: Path, args: dict, opts: TrainOptions) -> Optional[TrainResult]:
    """Decide what to do with an existing MODEL_DIR: skip (same options, complete), refuse, or clear (--force)."""
    import json

    from ..models.modeldir import META_FILE

    meta_path = out / META_FILE
    if opts.force and out.is_dir():
        for name in (META_FILE, "msc.safetensors", "adapter.safetensors", "unet.safetensors"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return None
    if meta_path.is_file() and opts.stage != "msc":
        old = dict(json.loads(meta_path.read_text()).get("training", {}).get("arguments", {}))
        if same_options(old, args):
            log.info("%s already holds a model trained with these options; nothing to do (--force retrains)", out)
            return TrainResult(model_dir=out, stage=opts.stage, complete=True, skipped=True)
        raise UsageError(f"{out} already holds a model trained with other options: use --force to retrain it "
                         "or choose another --out")
    if opts.resume is None and opts.stage != "msc" and not meta_path.is_file() \
            and list_checkpoints(out / "checkpoints" / "smis"):
        raise UsageError(f"{out} has checkpoints of an unfinished run: pass --resume latest to continue it "
                         "or --force to start over")
    return None


def _msc_stage(acc, enc, data, out: Path, cfg: LoopConfig, msc_args: dict, resume, on_progress, result):
    import json

    from ..models.modeldir import MSC_FILE, save_weights
    from ..models.msc import MSCConfig
    from .msc_stage import MSCTask

    done = out / "checkpoints" / MSC_DONE
    if done.is_file() and (out / MSC_FILE).is_file():
        info = json.loads(done.read_text())
        if {"cache_batch": RECORD_DEFAULTS["cache_batch"], **info.get("arguments", {})} != msc_args:
            raise UsageError(f"{out} holds an MSC trained with other options: use --force to retrain "
                             "or choose another --out")
        log.info("msc stage already finished with these options; loading %s", MSC_FILE)
        result.stages["msc"] = {k: v for k, v in info.items() if k not in ("config", "sha256", "arguments")}
        return _load_msc(out, enc, acc.device)
    if resume is None and list_checkpoints(out / "checkpoints" / "msc"):
        raise UsageError(f"{out} has checkpoints of an unfinished MSC run: pass --resume latest to continue it "
                         "or --force to start over")
    train_set, val_set = data("train", True), data("val", True)
    if len(train_set) == 0:
        raise InputError("no training-split diseased samples with a usable mask: the MSC cannot be trained")
    task = MSCTask(enc, MSCConfig.for_embed_dim(enc.embed_dim), seed=cfg.seed, cache_batch=msc_args["cache_batch"],
                   cache_workers=cfg.num_workers)
    msc_cfg = LoopConfig(**{**asdict(cfg), "max_steps": msc_args["steps"]})
    r = run_task(task, train_set, accelerator=acc, config=msc_cfg, val_dataset=val_set,
                 resume=None if resume is None else "latest", on_progress=on_progress)
    result.stages["msc"] = asdict(r)
    msc = acc.unwrap_model(task.msc) if hasattr(acc, "unwrap_model") else task.msc
    if acc.is_main_process:
        sha = save_weights(out / MSC_FILE, task.export_state(),
                           metadata={"config": json.dumps(task.config.to_dict())})
        atomic_write_json(done, {**asdict(r), "config": task.config.to_dict(), "sha256": sha,
                                 "arguments": msc_args})
        result.files[MSC_FILE] = sha
    acc.wait_for_everyone()
    msc.eval().requires_grad_(False)
    return msc


def _load_msc(out: Path, enc, device):
    import json

    from ..models.modeldir import MSC_FILE, load_weights
    from ..models.msc import MedicalSemanticController, MSCConfig

    done = out / "checkpoints" / MSC_DONE
    if not done.is_file() or not (out / MSC_FILE).is_file():
        raise UsageError(f"{out} has no trained MSC: run `medsoft-aug train --stage msc` (or --stage all) first")
    info = json.loads(done.read_text())
    config = MSCConfig.from_dict(info["config"])
    if config.embed_dim != enc.embed_dim:
        raise UsageError(f"the MSC in {out} was trained for a {config.embed_dim}-dim encoder, "
                         f"{enc.ref} gives {enc.embed_dim}")
    msc = MedicalSemanticController(config)
    msc.load_state_dict(load_weights(out / MSC_FILE, info.get("sha256")))
    return msc.to(device).eval().requires_grad_(False)


def _smis_task(base, enc, msc, opts: TrainOptions):
    from ..models.adapter import install_adapter
    from ..models.msc import msc_inputs
    from .smis_stage import SMISTask

    info = None
    msc_embed = None
    if not opts.no_msc:
        n = install_adapter(base.unet, enc.embed_dim, opts.gamma, seed=adapter_seed(opts.seed))
        info = {"gamma": opts.gamma, "msc_dim": enc.embed_dim, "n_layers": n}

        def msc_embed(images: torch.Tensor, masks: torch.Tensor, texts: list[str]) -> torch.Tensor:
            return msc(*msc_inputs(enc, images, masks, texts))

    mode = "full" if opts.train_unet == "full" else ("text_kv" if opts.no_msc else "adapter")
    return SMISTask(base.unet, base.vae, base.train_scheduler, base.encode_prompt, msc_embed, train=mode,
                    mask_mode=opts.mask_mode, cache_batch=opts.cache_batch, cache_workers=opts.num_workers), info


def _write_model(out: Path, task, base, base_info: dict, enc, msc, adapter_info, res: int, args: dict,
                 cfg: LoopConfig, work: Path, result: TrainResult, normal_class: str) -> None:
    from ..models.modeldir import save_model_dir, work_record

    work_info = work_record(work)
    files = save_model_dir(
        out, trained_unet_state=task.export_state(), base_info=base_info,
        encoder_info={**enc.describe(), "ref": args["encoder"]} if enc is not None else None, msc=msc,
        adapter_info=adapter_info, resolution=res,
        geometry=GridMapping(res, args["geometry"], float(args["crop_margin"])).to_dict(),
        mask_mode=args["mask_mode"], train_unet=args["train_unet"],
        normal_class=normal_class, inference_scheduler=dict(base.inference_scheduler_config),
        training={"arguments": args, "loop": asdict(cfg), "stages": result.stages}, work=work_info)
    result.files.update(files)

"""Options of ``balance``: one dataclass holding every option, validated in one :meth:`BalanceOptions.check_inputs`
before any model is loaded or any file is written (as diffusers pipelines' ``check_inputs`` do).

This module imports no torch (``balance --dry-run`` and option errors stay fast): the choices of the engine's
modules are repeated here and tested equal (``tests/test_engine.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from ..errors import UsageError
from ..geometry import MODES
from ..workdir import check_work, images_root_of, normal_class_of
from .batching import parse_batch_size
from .fastpath import FastPath
from .plan import NEGATIVE_MODES
from .scaleout import AutoShard, parse_shard, resolve_shard, shard_dir
from .writers import FORMATS

SCHEDULERS = ("ddim", "dpmsolver++", "unipc")      # = engine.SCHEDULERS (not imported here: engine imports torch)
BLENDS = ("masked", "donor")                        # = the engine's SamplingOptions.blend choices
SCORERS = ("feature", "classifier")                 # = select.SCORERS (select imports torch)


@dataclass
class BalanceOptions:
    """Everything ``balance`` can be told besides WORK, MODEL_DIR and OUT (see :func:`generate.stage.balance`).

    Plan: each disease class of WORK's train split is filled up to ``ceil(target_ratio x N_normal)``
    (``classes``: only these), with prompts from ``prompts`` (a YAML/JSON file; None: the shipped defaults) as
    ``prompt_mode`` says (auto | descriptions | file), donors and per-sample seeds from ``seed``; a plan larger
    than ``max_synthetic`` is refused. ``shard`` "K/N" (or "auto": from torchrun / accelerate / Slurm) makes
    only the K-th of N shares.
    Sampling (the paper's by default): ``steps`` DDIM steps, CFG scale ``guidance``, DDIM ``eta``; ``blend``:
    Eq. 7's latent outside the mask, ``masked`` = VAE(I_m) or ``donor`` = VAE(x0); ``scheduler``: ``ddim`` or a
    multistep solver (``dpmsolver++``, ``unipc``; see engine.SamplingOptions); ``deepcache_interval`` N > 0:
    DeepCache, the UNet's deep features reused between full evaluations every N steps (``generate.deepcache``;
    in the fingerprint when set, so a run without it is unchanged); ``negative_prompts``: ``none`` (CFG against
    the empty text, the paper's) or ``other-classes`` (each sample guided away from another disease class's
    description, as diffusers' ``negative_prompt``; ``plan.plan_balance``; in the fingerprint when set).
    Model and grid: ``base_model`` overrides MODEL_DIR's base (same hash); ``geometry`` / ``crop_margin`` /
    ``resolution`` override its grid mapping (warned).
    Engine: ``batch_size`` engine rows per batch, or ``auto`` (``generate.batching``: the largest that fits on
    CUDA, measured; a fixed default elsewhere; recorded in balance.json's ``batch``; outputs never depend on
    it), ``device``; ``dtype`` / ``channels_last`` / ``compile_unet``:
    fast-path options (``fastpath.FastPath``), not part of the fingerprint (outputs equal within the tolerances
    tested), recorded in balance.json's ``engine``.
    Selection: ``candidates`` K > 1 makes K candidates per planned sample and keeps the best by ``scorer``
    (``feature`` by default, or ``classifier``; see ``generate.select``) when its score reaches ``min_score``
    (the scorer's default floor when None).
    Outputs: ``output_format`` png | nifti | dicom (``images_root``: the source images a DICOM output needs;
    default: the folder ingest recorded); ``dry_run`` returns the plan only; ``force`` regenerates everything.
    """

    # plan
    target_ratio: float = 1.0
    classes: Optional[Sequence[str]] = None
    prompts: Optional[str | Path] = None
    prompt_mode: str = "auto"                  # auto | descriptions | file
    seed: int = 0
    max_synthetic: Optional[int] = None
    normal_class: Optional[str] = None         # None: the one ingest recorded
    shard: Optional[str] = None                # None | "K/N" | "auto"
    # sampling (Eq. 7-8)
    steps: int = 50
    guidance: float = 7.5
    eta: float = 0.0
    blend: str = "masked"                      # BLENDS
    scheduler: str = "ddim"                    # SCHEDULERS
    deepcache_interval: int = 0                # 0 off; N: whole UNet every N steps (generate/deepcache.py)
    negative_prompts: str = "none"             # plan.NEGATIVE_MODES
    # model and its grid mapping (None: MODEL_DIR's)
    base_model: Optional[str] = None
    geometry: Optional[str] = None             # geometry.MODES
    crop_margin: Optional[float] = None
    resolution: Optional[int] = None
    # engine
    batch_size: int | str = 8                  # or "auto" (generate/batching.py)
    device: str = "auto"
    dtype: str = "auto"                        # auto | fastpath.DTYPES
    channels_last: bool = False
    compile_unet: bool = False
    # post-selection
    candidates: int = 1
    scorer: Optional[str] = None               # None | SCORERS
    min_score: Optional[float] = None
    # outputs
    output_format: str = "png"                 # writers.FORMATS
    images_root: Optional[str | Path] = None
    dry_run: bool = False
    force: bool = False

    @property
    def fast(self) -> FastPath:
        """The engine fast-path options."""
        return FastPath(dtype=self.dtype, channels_last=self.channels_last, compile=self.compile_unet)

    @property
    def batch_request(self) -> int | str:
        """``batch_size`` parsed: an int >= 1 or ``"auto"``."""
        return parse_batch_size(self.batch_size)

    @property
    def scorer_kind(self) -> Optional[str]:
        """The scorer used: the given one, ``feature`` when K > 1 and none is given, else None (no scoring)."""
        return self.scorer or ("feature" if self.candidates > 1 else None)

    def check_inputs(self, work: str | Path, model: Optional[str | Path],
                     out: Optional[str | Path]) -> "Inputs":
        """Every option, then WORK's tables, then (unless ``dry_run``) MODEL_DIR's and OUT's paths and the source
        images a DICOM output needs; nothing is loaded or written. Raises UsageError (exit 2) naming the bad
        option, InputError (exit 3) for a bad WORK. Returns what the run needs (:class:`Inputs`)."""
        self._check_values()
        work = Path(work)
        auto = resolve_shard() if self.shard == "auto" else None           # --shard auto: see scaleout.py
        k, n = parse_shard(auto.spec if auto is not None else self.shard)
        index, masks = check_work(work)
        inputs = Inputs(work, index, masks, normal_class_of(work, self.normal_class), k, n, auto)
        if self.dry_run:
            return inputs
        if model is None:
            raise UsageError("--model MODEL_DIR is required (or use --dry-run)")
        if out is None:
            raise UsageError("--out OUT is required (or use --dry-run)")
        root = Path(out)
        if root.resolve() == work.resolve() or work.resolve() in root.resolve().parents:
            raise UsageError("--out must not be WORK or inside it")
        fmt_root = Path(self.images_root) if self.images_root else images_root_of(work)
        if self.output_format == "dicom" and fmt_root is None:
            raise UsageError("--output-format dicom needs the source images: give --images DIR")
        inputs.model_dir, inputs.root, inputs.fmt_root = Path(model), root, fmt_root
        inputs.out = root if auto is None else shard_dir(root, auto.k, auto.n)
        return inputs

    def _check_values(self) -> None:
        checks = [
            (self.output_format in FORMATS,
             f"--output-format must be one of {', '.join(FORMATS)}, got {self.output_format!r}"),
            (self.blend in BLENDS, f"--blend must be masked or donor, got {self.blend!r}"),
            (self.negative_prompts in NEGATIVE_MODES,
             f"--negative-prompts must be one of {', '.join(NEGATIVE_MODES)}, got {self.negative_prompts!r}"),
            (self.steps >= 1 and self.guidance >= 0 and self.eta >= 0,
             "--steps must be >= 1, --guidance and --eta >= 0"),
            (_batch_size_ok(self.batch_size), f"--batch-size must be an integer >= 1 or auto, got {self.batch_size!r}"),
            (self.deepcache_interval >= 0, f"--deepcache-interval must be >= 0, got {self.deepcache_interval}"),
            (not (self.deepcache_interval and self.compile_unet),
             "--deepcache-interval does not combine with --compile (DeepCache's wrappers keep Python state per call)"),
            (self.geometry is None or self.geometry in MODES,
             f"--geometry must be one of {', '.join(MODES)}, got {self.geometry!r}"),
            ((self.crop_margin is None or self.crop_margin >= 0) and (self.resolution is None or self.resolution >= 8),
             "--crop-margin must be >= 0 and --resolution >= 8"),
            (self.scheduler in SCHEDULERS,
             f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}"),
            (self.scheduler == "ddim" or not self.eta > 0,
             f"--eta applies to --scheduler ddim only, got --eta {self.eta} with --scheduler {self.scheduler}"),
            (self.candidates >= 1, f"--candidates must be >= 1, got {self.candidates}"),
            (self.scorer is None or self.scorer in SCORERS,
             f"--scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        self.fast.check()

    def fingerprint_options(self, inputs: "Inputs", mapping: dict[str, Any]) -> dict[str, Any]:
        """The options that define a run's outputs (balance.json ``options``; with the model's and the plan's
        hashes, its fingerprint): ``mapping`` is the grid mapping used (``GridMapping.to_dict``)."""
        return {"target_ratio": float(self.target_ratio), "classes": list(self.classes or []),
                "prompts": str(self.prompts or ""), "prompt_mode": self.prompt_mode, "seed": int(self.seed),
                "steps": int(self.steps), "guidance": float(self.guidance), "eta": float(self.eta),
                "blend": self.blend, "scheduler": self.scheduler, "output_format": self.output_format,
                "shard": f"{inputs.k}/{inputs.n}", "normal_class": inputs.normal_class, "geometry": mapping,
                "candidates": int(self.candidates), "scorer": self.scorer_kind or "",
                "min_score": None if self.min_score is None else float(self.min_score),
                **({"deepcache_interval": int(self.deepcache_interval)} if self.deepcache_interval else {}),
                **({"negative_prompts": self.negative_prompts} if self.negative_prompts != "none" else {})}

    def row_constants(self, model_name: str, model_sha: str) -> dict[str, str]:
        """The manifest fields every synthetic row of the run shares."""
        return {"model": model_name, "model_sha256": model_sha, "steps": str(int(self.steps)),
                "guidance": repr(float(self.guidance)), "eta": repr(float(self.eta)), "format": self.output_format}


@dataclass
class Inputs:
    """What :meth:`BalanceOptions.check_inputs` checked: WORK's tables, the normal class, the shard (``auto``:
    the launcher's) and, for a real run, MODEL_DIR, OUT (``root``: the one given; ``out``: this shard's folder
    under ``--shard auto``) and the source image root (None when not known)."""
    work: Path
    index: pd.DataFrame
    masks: pd.DataFrame
    normal_class: str
    k: int
    n: int
    auto: Optional[AutoShard] = None
    model_dir: Optional[Path] = None
    root: Optional[Path] = None
    out: Optional[Path] = None
    fmt_root: Optional[Path] = None


def _batch_size_ok(value: Any) -> bool:
    try:
        parse_batch_size(value)
        return True
    except (TypeError, ValueError):
        return False

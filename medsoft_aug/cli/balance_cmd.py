"""`medsoft-aug balance`: a thin shim over :func:`medsoft_aug.api.balance` (torch is imported only when generating).

Every option is declared once below, grouped as ``--help`` shows it; each is named as the field of
``generate.options.BalanceOptions`` it fills (the command builds the options from Typer's parsed values).
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from .options import (Blend, DType, Geometry, JsonOpt, Negatives, OutputFormat, PromptMode, Scheduler, Scorer,
                      WorkArg)
from .output import guarded, print_json, progress_reporter, torch_threads

if TYPE_CHECKING:
    from ..generate.options import BalanceOptions

_PLAN, _SAMPLING, _MODEL, _ENGINE, _SELECT, _OUTPUT = ("Plan", "Sampling (Eq. 7-8)", "Model and grid mapping",
                                                      "Engine", "Post-selection", "Outputs and runs")


def _opt(panel: str, *names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)


ModelOpt = Annotated[Optional[Path], typer.Option(
    "--model", help="MODEL_DIR written by `medsoft-aug train` (not needed with --dry-run).")]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="Output folder: synthetic images + masks, manifest.csv, balance.json (new, or a previous run "
    "of the same command to resume). Required unless --dry-run.")]
# ---- plan
TargetRatio = Annotated[float, _opt(_PLAN, "--target-ratio", help="Each disease class is filled up to "
                                    "ceil(ratio x N_normal) training samples (1.0 = as many as normal, the paper's "
                                    "setting).")]
Classes = Annotated[Optional[list[str]], _opt(_PLAN, "--classes", help="Only these disease classes (repeat the "
                                              "option or separate by commas; default: every disease class in the "
                                              "train split).")]
Prompts = Annotated[Optional[Path], _opt(_PLAN, "--prompts", help="Prompts file (YAML or JSON: class -> list of "
                                         "lesion descriptions; '{level}' is filled with the donor's level). "
                                         "Default: the shipped defaults.")]
PromptModeOpt = Annotated[PromptMode, _opt(_PLAN, "--prompt-mode", help="auto: the class's real train-split lesion "
                                           "descriptions when it has any, else the prompts file; descriptions: "
                                           "real descriptions only; file: the prompts file only.")]
Seed = Annotated[int, _opt(_PLAN, "--seed", help="Run seed: donor assignment and per-sample seeds.")]
MaxSynthetic = Annotated[Optional[int], _opt(_PLAN, "--max-synthetic", help="Largest plan allowed (default: 100x "
                                             "the train split; a larger plan is refused before anything is "
                                             "built).")]
NormalClass = Annotated[Optional[str], _opt(_PLAN, "--normal-class", help="Normal class (default: the one "
                                            "recorded by ingest).")]
Shard = Annotated[Optional[str], _opt(_PLAN, "--shard", help="K/N: make only the K-th of N deterministic shares of "
                                      "the plan (1 <= K <= N); shard 1 also copies the real samples. Join with "
                                      "`medsoft-aug manifest merge`. auto: K/N from torchrun / accelerate launch "
                                      "(RANK, WORLD_SIZE) or a Slurm job array (SLURM_ARRAY_TASK_*); each shard "
                                      "writes OUT/shard-K-of-N/ and OUT/manifest.csv is merged once all are "
                                      "complete.")]
# ---- sampling
Steps = Annotated[int, _opt(_SAMPLING, "--steps", help="DDIM steps (paper: 50).")]
Guidance = Annotated[float, _opt(_SAMPLING, "--guidance", help="Classifier-free guidance scale (paper: 7.5; uncond "
                                 "= empty text + zero e_MSC).")]
SchedulerOpt = Annotated[Scheduler, _opt(_SAMPLING, "--scheduler", help="ddim (the paper's, default), or a "
                                         "multistep solver for fewer UNet evaluations: dpmsolver++ or unipc (e.g. "
                                         "--steps 20; see bench/RESULTS.md for their measured quality vs 50-step "
                                         "DDIM). The Eq. 7 blend is done at the solver's own timesteps.")]
Eta = Annotated[float, _opt(_SAMPLING, "--eta", help="DDIM eta (0 = deterministic; >0 adds sigma_t z, Eq. 8).")]
DeepCacheOpt = Annotated[int, _opt(_SAMPLING, "--deepcache-interval", help="DeepCache (training-free UNet "
                                  "feature caching): run the whole UNet every N-th step and only its shallow "
                                  "branch in between (0 = off, the default; see bench/RESULTS.md for its measured "
                                  "speed and quality vs the plain engine).")]
BlendOpt = Annotated[Blend, _opt(_SAMPLING, "--blend", help="Latent kept outside the mask during denoising (Eq. "
                                 "7): masked = VAE(I_m), the paper's text; donor = VAE(x0) (no dark band where the "
                                 "soft mask is fractional). Pixels where the mask is 0 are the donor's either "
                                 "way.")]
NegativesOpt = Annotated[Negatives, _opt(_SAMPLING, "--negative-prompts", help="What classifier-free guidance "
                                         "steers away from: none = the empty text (the paper's, default); "
                                         "other-classes = another disease class's description per sample (like "
                                         "diffusers' negative_prompt; recorded per row in the manifest's "
                                         "negative_prompt). Needs two or more disease classes.")]
# ---- model and grid mapping
BaseModel = Annotated[Optional[str], _opt(_MODEL, "--base-model", help="Use this base model (diffusers folder or "
                                          "hub id) instead of the one recorded in MODEL_DIR, e.g. the same SD1.5 "
                                          "moved elsewhere; it must hash to the recorded sha256.")]
GeometryOpt = Annotated[Optional[Geometry], _opt(_MODEL, "--geometry", help="Native-to-model grid mapping: crop (a "
                                                 "square around the soft mask) or pad (the whole slice padded to a "
                                                 "square). Default: the one MODEL_DIR was trained with (a warning "
                                                 "if different).")]
CropMargin = Annotated[Optional[float], _opt(_MODEL, "--crop-margin", help="Context around the mask's bounding box "
                                             "on each side, as a fraction of its longer side (crop only). Default: "
                                             "the trained one.")]
Resolution = Annotated[Optional[int], _opt(_MODEL, "--resolution", help="Model resolution in pixels. Default: the "
                                           "trained one (a warning if different).")]
# ---- engine
BatchSize = Annotated[str, _opt(_ENGINE, "--batch-size", help="Engine rows per batch (each with its own mask, "
                                "prompt, e_MSC, seed), or auto: on CUDA the largest that fits, measured by one "
                                "denoising step per probed size (peak memory vs free memory, 10% margin); 8 "
                                "elsewhere. Outputs do not depend on it; the choice is in balance.json.",
                                metavar="N|auto")]
Device = Annotated[str, _opt(_ENGINE, "--device", help="auto (CUDA + fp16 when available, else CPU), cpu, cuda, "
                             "cuda:N.")]
DTypeOpt = Annotated[DType, _opt(_ENGINE, "--dtype", help="Weights of UNet/VAE: auto (CUDA fp16, CPU fp32), fp32, "
                                 "fp16 or bf16.")]
ChannelsLast = Annotated[bool, _opt(_ENGINE, "--channels-last", help="UNet and VAE in channels_last memory format "
                                    "(faster convolutions on CUDA).")]
Compile = Annotated[bool, _opt(_ENGINE, "--compile", help="torch.compile the UNet (first batch of each size "
                               "compiles; later ones reuse it).")]
# ---- post-selection
Candidates = Annotated[int, _opt(_SELECT, "--candidates", help="Generate K candidates per planned sample (each its "
                                 "own seed) and keep the one the scorer ranks best; a sample none of whose "
                                 "candidates reaches the floor is reported (exit 4).")]
ScorerOpt = Annotated[Optional[Scorer], _opt(_SELECT, "--scorer", help="feature (encoder-feature similarity to the "
                                             "class's real training lesions vs normal; the default with "
                                             "--candidates > 1) or classifier (logistic regression on the real "
                                             "training split, first-order intensity statistics inside the mask). "
                                             "Recorded with every candidate's score.")]
MinScore = Annotated[Optional[float], _opt(_SELECT, "--min-score", help="Floor of the score a kept candidate needs "
                                           "(default: feature 0, classifier 0.5).")]
# ---- outputs and runs
OutputFormatOpt = Annotated[OutputFormat, _opt(_OUTPUT, "--output-format", help="png (16-bit grayscale), nifti "
                                               "(slice in the donor's geometry), dicom (derived, de-identified "
                                               "instance from the donor).")]
Images = Annotated[Optional[Path], _opt(_OUTPUT, "--images", help="Source images folder for --output-format dicom "
                                        "(default: the one recorded by ingest).")]
DryRun = Annotated[bool, _opt(_OUTPUT, "--dry-run", help="Print the plan as JSON (counts before/after, donors, "
                              "prompts); load no model, write nothing.")]
Force = Annotated[bool, _opt(_OUTPUT, "--force", help="Regenerate everything, even into an OUT holding a run with "
                             "other options.")]

_NOT_OPTIONS = ("work", "model", "out", "json_out")


@guarded
def balance_command(
    ctx: typer.Context, work: WorkArg, model: ModelOpt = None, out: OutOpt = None,
    target_ratio: TargetRatio = 1.0, classes: Classes = None, prompts: Prompts = None,
    prompt_mode: PromptModeOpt = PromptMode.auto, seed: Seed = 0, max_synthetic: MaxSynthetic = None,
    normal_class: NormalClass = None, shard: Shard = None,
    steps: Steps = 50, guidance: Guidance = 7.5, scheduler: SchedulerOpt = Scheduler.ddim, eta: Eta = 0.0,
    blend: BlendOpt = Blend.masked, deepcache_interval: DeepCacheOpt = 0,
    negative_prompts: NegativesOpt = Negatives.none,
    base_model: BaseModel = None, geometry: GeometryOpt = None, crop_margin: CropMargin = None,
    resolution: Resolution = None,
    batch_size: BatchSize = "8", device: Device = "auto", dtype: DTypeOpt = DType.auto,
    channels_last: ChannelsLast = False, compile_unet: Compile = False,
    candidates: Candidates = 1, scorer: ScorerOpt = None, min_score: MinScore = None,
    output_format: OutputFormatOpt = OutputFormat.png, images_root: Images = None, dry_run: DryRun = False,
    force: Force = False, json_out: JsonOpt = False,
) -> None:
    """Balance every disease class by inpainting lesions into normal training images (Eq. 7-8)."""
    from ..api import balance

    with progress_reporter(not dry_run) as on_progress, torch_threads():
        res = balance(work, model, out, balance_options(ctx.params), on_progress=on_progress)
    if json_out or dry_run:
        print_json(res)
        return
    after = ", ".join(f"{c}: {res['counts_before'].get(c, 0)} -> {n}" for c, n in res["counts_after"].items())
    typer.echo(f"balance: {res['generated']} generated, {res['skipped']} already done ({after}) -> {res['manifest']}")
    for c, ev in (res.get("evidence") or {}).items():
        typer.echo(f"{c}: {ev['text']}")


def balance_options(params: dict[str, Any]) -> BalanceOptions:
    """The :class:`BalanceOptions` of the command's parsed parameters (named as its fields; choices as plain
    strings; ``--classes`` split at commas)."""
    from ..api import BalanceOptions

    kw = {k: (v.value if isinstance(v, Enum) else v) for k, v in params.items() if k not in _NOT_OPTIONS}
    kw["classes"] = [c.strip() for item in kw["classes"] or () for c in item.split(",") if c.strip()] or None
    return BalanceOptions(**kw)


def register(app: typer.Typer) -> None:
    app.command("balance")(balance_command)

"""`medsoft-aug balance`: a thin shim over :func:`medsoft_aug.api.balance` (torch is imported only when generating)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Blend, Geometry, JsonOpt, OutputFormat, PromptMode, Scorer, WorkArg, value
from .output import guarded, print_json, progress_reporter, torch_threads


# Over 60 lines only through its option declarations (the body is 16 lines; the docstring is the --help text).
@guarded
def balance_command(
    work: WorkArg,
    model: Annotated[Optional[Path], typer.Option(
        "--model", help="MODEL_DIR written by `medsoft-aug train` (not needed with --dry-run).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Output folder: synthetic images + masks, manifest.csv, balance.json (new, or a previous "
        "run of the same command to resume). Required unless --dry-run.")] = None,
    target_ratio: Annotated[float, typer.Option(
        "--target-ratio", help="Each disease class is filled up to ceil(ratio x N_normal) training samples "
        "(1.0 = as many as normal, the paper's setting).")] = 1.0,
    classes: Annotated[Optional[list[str]], typer.Option(
        "--classes", help="Only these disease classes (repeat the option or separate by commas; default: every "
        "disease class in the train split).")] = None,
    prompts: Annotated[Optional[Path], typer.Option(
        "--prompts", help="Prompts file (YAML or JSON: class -> list of lesion descriptions; '{level}' is "
        "filled with the donor's level). Default: the shipped defaults.")] = None,
    prompt_mode: Annotated[PromptMode, typer.Option(
        "--prompt-mode", help="auto: the class's real train-split lesion descriptions when it has any, else the "
        "prompts file; descriptions: real descriptions only; file: the prompts file only.")] = PromptMode.auto,
    seed: Annotated[int, typer.Option("--seed", help="Run seed: donor assignment and per-sample seeds.")] = 0,
    steps: Annotated[int, typer.Option("--steps", help="DDIM steps (paper: 50).")] = 50,
    guidance: Annotated[float, typer.Option(
        "--guidance", help="Classifier-free guidance scale (paper: 7.5; uncond = empty text + zero e_MSC).")] = 7.5,
    scheduler: Annotated[str, typer.Option(
        "--scheduler", help="ddim (the paper's, default), or a multistep solver for fewer UNet evaluations: "
        "dpmsolver++ or unipc (e.g. --steps 20; see bench/RESULTS.md for their measured quality vs 50-step "
        "DDIM). The Eq. 7 blend is done at the solver's own timesteps.")] = "ddim",
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Weights of UNet/VAE: auto (CUDA fp16, CPU fp32), fp32, fp16 or bf16.")] = "auto",
    channels_last: Annotated[bool, typer.Option(
        "--channels-last", help="UNet and VAE in channels_last memory format (faster convolutions on CUDA).")] = False,
    compile_unet: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the UNet (first batch of each size compiles; later ones reuse it).")] = False,
    eta: Annotated[float, typer.Option("--eta", help="DDIM eta (0 = deterministic; >0 adds sigma_t z, Eq. 8).")] = 0.0,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Samples per batch (each with its own mask, prompt, e_MSC, seed).")] = 8,
    device: Annotated[str, typer.Option(
        "--device", help="auto (CUDA + fp16 when available, else CPU), cpu, cuda, cuda:N.")] = "auto",
    output_format: Annotated[OutputFormat, typer.Option(
        "--output-format", help="png (16-bit grayscale), nifti (slice in the donor's geometry), dicom (derived, "
        "de-identified instance from the donor).")] = OutputFormat.png,
    images: Annotated[Optional[Path], typer.Option(
        "--images", help="Source images folder for --output-format dicom (default: the one recorded by "
        "ingest).")] = None,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", help="K/N: make only the K-th of N deterministic shares of the plan (1 <= K <= N); shard 1 "
        "also copies the real samples. Join with `medsoft-aug manifest merge`. auto: K/N from torchrun / "
        "accelerate launch (RANK, WORLD_SIZE) or a Slurm job array (SLURM_ARRAY_TASK_*); each shard writes "
        "OUT/shard-K-of-N/ and OUT/manifest.csv is merged once all are complete.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan as JSON (counts before/after, donors, prompts); load no model, write "
        "nothing.")] = False,
    max_synthetic: Annotated[Optional[int], typer.Option(
        "--max-synthetic", help="Largest plan allowed (default: 100x the train split; a larger plan is refused "
        "before anything is built).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Regenerate everything, even into an OUT holding a run with other options.")] = False,
    normal_class: Annotated[Optional[str], typer.Option(
        "--normal-class", help="Normal class (default: the one recorded by ingest).")] = None,
    blend: Annotated[Blend, typer.Option(
        "--blend", help="Latent kept outside the mask during denoising (Eq. 7): masked = VAE(I_m), the paper's "
        "text; donor = VAE(x0) (no dark band where the soft mask is fractional). Pixels where the mask is 0 are "
        "the donor's either way.")] = Blend.masked,
    base_model: Annotated[Optional[str], typer.Option(
        "--base-model", help="Use this base model (diffusers folder or hub id) instead of the one recorded in "
        "MODEL_DIR, e.g. the same SD1.5 moved elsewhere; it must hash to the recorded sha256.")] = None,
    geometry: Annotated[Optional[Geometry], typer.Option(
        "--geometry", help="Native-to-model grid mapping: crop (a square around the soft mask) or pad (the "
        "whole slice padded to a square). Default: the one MODEL_DIR was trained with (a warning if "
        "different).")] = None,
    crop_margin: Annotated[Optional[float], typer.Option(
        "--crop-margin", help="Context around the mask's bounding box on each side, as a fraction of its longer "
        "side (crop only). Default: the trained one.")] = None,
    resolution: Annotated[Optional[int], typer.Option(
        "--resolution", help="Model resolution in pixels. Default: the trained one (a warning if "
        "different).")] = None,
    candidates: Annotated[int, typer.Option(
        "--candidates", help="Post-selection: generate K candidates per planned sample (each its own seed) and "
        "keep the one the scorer ranks best; a sample none of whose candidates reaches the floor is reported "
        "(exit 4).")] = 1,
    scorer: Annotated[Optional[Scorer], typer.Option(
        "--scorer", help="feature (encoder-feature similarity to the class's real training lesions vs normal; "
        "the default with --candidates > 1) or classifier (logistic regression on the real training split, "
        "first-order intensity statistics inside the mask). Recorded with every candidate's score.")] = None,
    min_score: Annotated[Optional[float], typer.Option(
        "--min-score", help="Floor of the score a kept candidate needs (default: feature 0, classifier "
        "0.5).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Balance every disease class by inpainting lesions into normal training images (Eq. 7-8)."""
    from ..api import balance

    if classes:
        classes = [c.strip() for item in classes for c in item.split(",") if c.strip()]
    with progress_reporter(not dry_run) as on_progress, torch_threads():
        res = balance(work, model, out, target_ratio=target_ratio, classes=classes, prompts=prompts,
                      prompt_mode=value(prompt_mode), seed=seed, steps=steps, guidance=guidance, eta=eta,
                      batch_size=batch_size, device=device, output_format=value(output_format), shard=shard,
                      dry_run=dry_run, force=force, normal_class=normal_class, images_root=images,
                      base_model=base_model, blend=value(blend), max_synthetic=max_synthetic, scheduler=scheduler,
                      dtype=dtype, channels_last=channels_last, compile_unet=compile_unet,
                      geometry=value(geometry), crop_margin=crop_margin, resolution=resolution,
                      candidates=candidates, scorer=value(scorer), min_score=min_score,
                      on_progress=on_progress)
    if json_out or dry_run:
        print_json(res)
        return
    after = ", ".join(f"{c}: {res['counts_before'].get(c, 0)} -> {n}" for c, n in res["counts_after"].items())
    typer.echo(f"balance: {res['generated']} generated, {res['skipped']} already done ({after}) -> {res['manifest']}")
    for c, ev in (res.get("evidence") or {}).items():
        typer.echo(f"{c}: {ev['text']}")


def register(app: typer.Typer) -> None:
    app.command("balance")(balance_command)

"""`medsoft-aug train`: a thin shim over :func:`medsoft_aug.api.train` (works under `accelerate launch`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Geometry, JsonOpt, MaskMode, MixedPrecision, TrainDevice, TrainStage, TrainUnet, WorkArg, value
from .output import guarded, print_json, progress_reporter, torch_threads


def register(app: typer.Typer) -> None:
    # Over 60 lines only through its option declarations (the body is 26 lines; the docstring is the --help text).
    @app.command("train")
    @guarded
    def train_cmd(
        work: WorkArg,
        out: Annotated[Path, typer.Option("--out", "-o", help="MODEL_DIR to write (medsoft_model.json, "
                                          "msc.safetensors, adapter.safetensors, checkpoints/).")],
        stage: Annotated[TrainStage, typer.Option("--stage", help="all (MSC then SMIS), msc (Eq. 4 only) or smis "
                                                  "(Eq. 5-6, needs a trained MSC in MODEL_DIR).")] = TrainStage.all,
        max_steps: Annotated[int, typer.Option("--max-steps", help="Optimizer steps per stage "
                                               "(the paper: 60000 on SD1.5).")] = 1000,
        msc_steps: Annotated[Optional[int], typer.Option("--msc-steps", help="Optimizer steps of the MSC "
                                                         "stage (default: --max-steps).")] = None,
        base_model: Annotated[str, typer.Option("--base-model", help="tiny, a diffusers-layout folder, or a "
                                                "hub id (online).")] = "tiny",
        encoder: Annotated[str, typer.Option("--encoder", help="tiny, a local open_clip BiomedCLIP folder, or "
                                             "hf-hub:... (online).")] = "tiny",
        gamma: Annotated[float, typer.Option("--gamma", help="Weight of the medical-semantic attention term "
                                             "(Eq. 5).")] = 1.0,
        no_msc: Annotated[bool, typer.Option("--no-msc", help="Ablation 'w/o MSC': text-only conditioning; "
                                             "trains the text cross-attention K/V instead of an adapter.")] = False,
        mask_mode: Annotated[MaskMode, typer.Option("--mask-mode", help="soft (SMIS) or hard (soft mask "
                                                    "thresholded at 0.5: ablation 'w/o SMIS').")] = MaskMode.soft,
        train_unet: Annotated[TrainUnet, typer.Option("--train-unet", help="none (only the adapter trains, as in "
                                                      "the paper) or full (the whole UNet too; extension).")
                              ] = TrainUnet.none,
        resolution: Annotated[Optional[int], typer.Option("--resolution", help="Training resolution in pixels "
                                                          "(default: the base model's, 512 for SD1.5).")] = None,
        geometry: Annotated[Geometry, typer.Option("--geometry", help="Native-to-model grid mapping: crop (a "
                                                   "square around the soft mask, resized; no distortion) or pad "
                                                   "(the whole slice padded to a square). Recorded in MODEL_DIR; "
                                                   "balance uses it.")] = Geometry.crop,
        crop_margin: Annotated[float, typer.Option("--crop-margin", help="Context around the mask's bounding "
                                                   "box on each side, as a fraction of its longer side (crop "
                                                   "only).")] = 0.25,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per process per "
                                                "micro-batch.")] = 4,
        grad_accum: Annotated[int, typer.Option("--grad-accum", help="Gradient accumulation steps.")] = 1,
        mixed_precision: Annotated[MixedPrecision, typer.Option("--mixed-precision", help="no, fp16 or bf16 "
                                                                "(GPU).")] = MixedPrecision.no,
        gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing",
                                                             help="Trade compute for UNet memory.")] = False,
        checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a resumable checkpoint "
                                                      "every N steps (0 = never).")] = 500,
        checkpoints_keep: Annotated[int, typer.Option("--checkpoints-keep", help="Keep the newest K "
                                                      "checkpoints per stage.")] = 2,
        resume: Annotated[Optional[str], typer.Option("--resume", help="latest, or a checkpoint folder: continue "
                                                      "exactly where a stopped run left off.")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of sample order, noise and dropout.")] = 0,
        device: Annotated[TrainDevice, typer.Option("--device", help="cpu to force the CPU; auto: accelerate's "
                                                    "choice, CUDA when present (pick GPUs with accelerate launch "
                                                    "/ CUDA_VISIBLE_DEVICES).")] = TrainDevice.auto,
        force: Annotated[bool, typer.Option("--force", help="Retrain over an existing MODEL_DIR.")] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Train the MSC and the soft-mask adapter on WORK; write MODEL_DIR."""
        from ..api import train

        with progress_reporter() as on_progress, torch_threads():
            res = train(work, out, stage=value(stage), max_steps=max_steps, msc_steps=msc_steps,
                        base_model=base_model, encoder=encoder, gamma=gamma, train_unet=value(train_unet),
                        no_msc=no_msc, mask_mode=value(mask_mode), resolution=resolution, geometry=value(geometry),
                        crop_margin=crop_margin, batch_size=batch_size,
                        grad_accum=grad_accum, mixed_precision=value(mixed_precision),
                        gradient_checkpointing=gradient_checkpointing, checkpoint_every=checkpoint_every,
                        checkpoints_keep=checkpoints_keep, resume=resume, seed=seed,
                        device=None if device == TrainDevice.auto else value(device), force=force,
                        on_progress=on_progress)
        if not _is_main():
            return
        if json_out:
            print_json(res.to_dict())
            return
        if res.skipped:
            typer.echo(f"{res.model_dir}: already trained with these options (use --force to retrain)")
            return
        for name, st in res.stages.items():
            val = " ".join(f"{k}={v:.4g}" for k, v in st.get("val", {}).items())
            loss = st.get("train_loss")
            typer.echo(f"{name}: {st['steps']} steps, train loss {loss:.4g} {val}".rstrip()
                       if loss is not None else f"{name}: {st['steps']} steps")
        typer.echo(f"model: {res.model_dir}" + ("" if res.complete else " (MSC only; run --stage smis next)"))


def _is_main() -> bool:
    """Only the main process prints results under `accelerate launch`."""
    import os

    return os.environ.get("RANK", "0") == "0"

"""`medsoft-aug train`: a thin shim over :func:`medsoft_aug.api.train` (works under `accelerate launch`).

The options are declared once here as annotated types (Typer reads their help and lists Enum choices); the command
passes them to :class:`medsoft_aug.train.stage.TrainOptions` by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import Geometry, JsonOpt, MaskMode, MixedPrecision, TrainDevice, TrainStage, TrainUnet, WorkArg, value
from .output import guarded, print_json, progress_reporter, torch_threads


def _opt(name: str, help: str, *flags: str) -> Any:
    return typer.Option(name, *flags, help=help)


Out = Annotated[Path, _opt("--out", "MODEL_DIR to write (medsoft_model.json, msc.safetensors, adapter.safetensors, "
                           "checkpoints/).", "-o")]
Stage = Annotated[TrainStage, _opt("--stage", "all (MSC then SMIS), msc (Eq. 4 only) or smis (Eq. 5-6, needs a "
                                   "trained MSC in MODEL_DIR).")]
MaxSteps = Annotated[int, _opt("--max-steps", "Optimizer steps per stage (the paper: 60000 on SD1.5).")]
MscSteps = Annotated[Optional[int], _opt("--msc-steps", "Optimizer steps of the MSC stage (default: --max-steps).")]
BaseModel = Annotated[str, _opt("--base-model", "tiny (64 px), tiny-128 (the demo's), a diffusers-layout folder, a "
                                               "single-file checkpoint, or a hub id (online).")]
Encoder = Annotated[str, _opt("--encoder", "tiny, a local open_clip BiomedCLIP folder, or hf-hub:... (online).")]
Gamma = Annotated[float, _opt("--gamma", "Weight of the medical-semantic attention term (Eq. 5).")]
NoMsc = Annotated[bool, _opt("--no-msc", "Ablation 'w/o MSC': text-only conditioning; trains the text "
                             "cross-attention K/V instead of an adapter.")]
Mask = Annotated[MaskMode, _opt("--mask-mode", "soft (SMIS) or hard (soft mask thresholded at 0.5: ablation "
                                "'w/o SMIS').")]
Unet = Annotated[TrainUnet, _opt("--train-unet", "none (only the adapter trains, as in the paper) or full (the "
                                 "whole UNet too; extension).")]
Resolution = Annotated[Optional[int], _opt("--resolution", "Training resolution in pixels (default: the base "
                                           "model's, 512 for SD1.5).")]
Geom = Annotated[Geometry, _opt("--geometry", "Native-to-model grid mapping: crop (a square around the soft mask, "
                                "resized; no distortion) or pad (the whole slice padded to a square). Recorded in "
                                "MODEL_DIR; balance uses it.")]
Margin = Annotated[float, _opt("--crop-margin", "Context around the mask's bounding box on each side, as a fraction "
                               "of its longer side (crop only).")]
Batch = Annotated[str, _opt("--batch-size", "Samples per process per micro-batch: an integer >= 1, or auto (CUDA: "
                            "the largest micro-batch whose measured training step - forward, backward, optimizer "
                            "step - fits with a 10% margin, probed per stage at 1, 2, 4, ...; CPU/MPS: 4). The "
                            "choice is recorded in MODEL_DIR and reused by --resume. auto picks the micro-batch "
                            "only: --grad-accum still multiplies it.")]
Accum = Annotated[int, _opt("--grad-accum", "Gradient accumulation steps: an optimizer step sees batch size x "
                            "grad-accum x processes samples.")]
Precision = Annotated[MixedPrecision, _opt("--mixed-precision", "no (fp32), bf16 (CPU or a bf16 GPU; the fast "
                                           "choice on A100/H100/H200) or fp16 (CUDA only, loss scaling); "
                                           "unsupported on this machine: exit 3.")]
Checkpointing = Annotated[bool, _opt("--gradient-checkpointing", "Recompute UNet activations in the backward "
                                     "pass: less memory (larger batches), more compute per step.")]
Compile = Annotated[bool, _opt("--compile", "torch.compile the UNet for the SMIS steps (the first step compiles: "
                               "minutes). Same results within float tolerance.")]
Workers = Annotated[int, _opt("--num-workers", "Data-loader worker processes reading slices while the device "
                              "computes (0: in the training process). Results do not depend on it.")]
CacheBatch = Annotated[int, _opt("--cache-batch", "Samples per batch when VAE latents and encoder/MSC features are "
                                 "cached on the device before the first step (larger: faster on a GPU).")]
Every = Annotated[int, _opt("--checkpoint-every", "Save a resumable checkpoint every N steps (0 = never).")]
Keep = Annotated[int, _opt("--checkpoints-keep", "Keep the newest K checkpoints per stage.")]
Resume = Annotated[Optional[str], _opt("--resume", "latest, or a checkpoint folder: continue exactly where a "
                                       "stopped run left off.")]
Seed = Annotated[int, _opt("--seed", "Seed of sample order, noise and dropout.")]
Device = Annotated[TrainDevice, _opt("--device", "cpu to force the CPU; auto: accelerate's choice, CUDA when present "
                                     "(pick GPUs with accelerate launch / CUDA_VISIBLE_DEVICES).")]
Force = Annotated[bool, _opt("--force", "Retrain over an existing MODEL_DIR.")]


def train_cmd(work: WorkArg, out: Out, stage: Stage = TrainStage.all, max_steps: MaxSteps = 1000,
              msc_steps: MscSteps = None, base_model: BaseModel = "tiny", encoder: Encoder = "tiny",
              gamma: Gamma = 1.0, no_msc: NoMsc = False, mask_mode: Mask = MaskMode.soft,
              train_unet: Unet = TrainUnet.none, resolution: Resolution = None, geometry: Geom = Geometry.crop,
              crop_margin: Margin = 0.25, batch_size: Batch = "4", grad_accum: Accum = 1,
              mixed_precision: Precision = MixedPrecision.no, gradient_checkpointing: Checkpointing = False,
              compile: Compile = False, num_workers: Workers = 0, cache_batch: CacheBatch = 8,
              checkpoint_every: Every = 500, checkpoints_keep: Keep = 2, resume: Resume = None, seed: Seed = 0,
              device: Device = TrainDevice.auto, force: Force = False, json_out: JsonOpt = False) -> None:
    """Train the MSC and the soft-mask adapter on WORK; write MODEL_DIR.

    On a GPU: --mixed-precision bf16, --num-workers 4, --compile; --gradient-checkpointing when memory is short.
    On a shared CPU: --threads 1. A stopped run continues with the same command plus --resume latest.
    """
    # 1. the command's options, by name, as TrainOptions fields (choices as their plain values)
    options = {k: value(v) if hasattr(v, "value") else v for k, v in locals().items()
               if k not in ("work", "out", "json_out", "device")}
    options["device"] = None if device == TrainDevice.auto else value(device)
    from ..api import train

    # 2. train, with progress on stderr
    with progress_reporter() as on_progress, torch_threads():
        res = train(work, out, on_progress=on_progress, **options)
    # 3. results on stdout (main process only)
    if _is_main():
        _print_result(res, json_out)


def _print_result(res, json_out: bool) -> None:
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


def register(app: typer.Typer) -> None:
    app.command("train")(guarded(train_cmd))


def _is_main() -> bool:
    """Only the main process prints results under `accelerate launch`."""
    import os

    return os.environ.get("RANK", "0") == "0"

"""Checkpoints of ``loop.run_task``: what is stored, how a run finds and resumes one.

Checkpoint folder ``<project_dir>/checkpoints/checkpoint_<i>/`` holds: ``trainable_<m>.safetensors`` (only the
trainable tensors of each prepared module, via accelerate's save/load hooks - not the frozen base), accelerate's
``optimizer.bin`` and ``random_states_<r>.pkl`` (pickles written by this tool; accelerate reloads them with
``torch.load(weights_only=True)``), ``generator_<r>.safetensors`` and, written last as the completeness marker,
``trainer_state.json`` (the run's signature, step and history). Rotation keeps ``checkpoints_keep`` folders
(accelerate's ``ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=K)``).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..fsutil import atomic_path, atomic_write_json

log = logging.getLogger("medsoft_aug.train.checkpoints")

STATE_FILE = "trainer_state.json"
# Signature keys added after checkpoints without them were written: a missing key reads as this value.
_SIGNATURE_DEFAULTS = {"cache_batch": 8}


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of a module by name, detached on CPU (what a checkpoint stores)."""
    return {n: p.detach().to("cpu").contiguous() for n, p in module.named_parameters() if p.requires_grad}


def _load_trainable(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    own = dict(module.named_parameters())
    want = {n for n, p in own.items() if p.requires_grad}
    if set(state) != want:
        raise UsageError(f"checkpoint {path.parent.name} does not match this run's trainable weights "
                         f"({len(state)} stored, {len(want)} expected): resume with the same options")
    with torch.no_grad():
        for n, t in state.items():
            own[n].copy_(t.to(device=own[n].device, dtype=own[n].dtype))


def register_hooks(accelerator) -> list:
    """accelerate save/load hooks that store only the trainable tensors of each prepared module (the frozen base
    is not checkpointed). Returns the hook handles (``.remove()`` them when the run ends)."""
    from safetensors.torch import save_file

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for i, m in enumerate(models):
                with atomic_path(Path(output_dir) / f"trainable_{i}.safetensors") as tmp:
                    save_file(trainable_state(accelerator.unwrap_model(m)), str(tmp))
        weights.clear()

    def load_hook(models, input_dir):
        for i, m in enumerate(models):
            _load_trainable(accelerator.unwrap_model(m), Path(input_dir) / f"trainable_{i}.safetensors")
        models.clear()

    return [accelerator.register_save_state_pre_hook(save_hook),
            accelerator.register_load_state_pre_hook(load_hook)]


def list_checkpoints(project_dir: str | Path) -> list[Path]:
    """Complete checkpoints (with trainer_state.json) of a stage, oldest first."""
    root = Path(project_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.glob("checkpoint_*"):
        if (d / STATE_FILE).is_file() and d.name.split("_")[-1].isdigit():
            found.append((int(d.name.split("_")[-1]), d))
    return [d for _, d in sorted(found)]


def resolve_checkpoint(project_dir: str | Path, resume: str | Path | None) -> Path | None:
    """``None`` -> None; ``"latest"`` -> newest complete checkpoint or None; a path -> that checkpoint (checked)."""
    if resume is None:
        return None
    if str(resume) == "latest":
        found = list_checkpoints(project_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UsageError(f"--resume {path}: not a complete checkpoint folder (no {STATE_FILE})")
    return path


def resume_state(accelerator, generator: torch.Generator, signature: dict[str, Any], resume,
                 name: str) -> tuple[int, list, int | None]:
    """Load the checkpoint ``resume`` names (weights, optimizer, RNG states, ``generator``) after checking that it
    was made with the same ``signature``; returns (step, history, resumed_from) - (0, [], None) when there is none."""
    from safetensors.torch import load_file

    ckpt = resolve_checkpoint(accelerator.project_dir, resume)
    if ckpt is None:
        if resume is not None:
            log.info("%s: no checkpoint to resume from; starting at step 0", name)
        return 0, [], None
    state = json.loads((ckpt / STATE_FILE).read_text())
    diff = {k: (state.get(k, _SIGNATURE_DEFAULTS.get(k)), v) for k, v in signature.items()
            if state.get(k, _SIGNATURE_DEFAULTS.get(k)) != v}
    if diff:
        raise UsageError(f"cannot resume from {ckpt.name}: it was made with different settings "
                         + ", ".join(f"{k}={a} (now {b})" for k, (a, b) in diff.items()))
    accelerator.load_state(str(ckpt))
    rank = accelerator.process_index
    generator.set_state(load_file(str(ckpt / f"generator_{rank}.safetensors"))["state"].to(
        generator.get_state().device))
    step = int(state["step"])
    accelerator.project_configuration.iteration = int(ckpt.name.split("_")[-1]) + 1
    log.info("%s: resumed from %s at step %d", name, ckpt.name, step)
    return step, list(state.get("history", [])), step


def save_checkpoint(accelerator, generator: torch.Generator, state: dict) -> Path:
    """A complete checkpoint of the run (all processes call it); ``trainer_state.json`` is written last."""
    from safetensors.torch import save_file

    target = Path(accelerator.project_dir) / "checkpoints" / f"checkpoint_{accelerator.save_iteration}"
    if accelerator.is_main_process and target.is_dir() and not (target / STATE_FILE).is_file():
        shutil.rmtree(target)       # left half-written by a killed run
    accelerator.wait_for_everyone()
    location = Path(accelerator.save_state())
    with atomic_path(location / f"generator_{accelerator.process_index}.safetensors") as tmp:
        save_file({"state": generator.get_state().cpu()}, str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(location / STATE_FILE, state)
    accelerator.wait_for_everyone()
    log.debug("checkpoint %s at step %d", location.name, state["step"])
    return location

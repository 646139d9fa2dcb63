"""``train --batch-size auto``: the micro-batch of a stage, chosen once, before its first step.

* A given size is used as given (``how: "given"``).
* ``auto`` on a run that resumes from a checkpoint: the size recorded in that checkpoint (``trainer_state.json``,
  ``batch``), never probed again, so a resumed run sees the same sample stream as one that never stopped.
* ``auto`` on CUDA (:func:`probe_train_batch`): one real training step of the stage's task - forward, backward
  and the optimizer step (the AdamW state is allocated then), through the accelerate-prepared modules, with
  gradient checkpointing and mixed precision as the run has them - is measured at 1, 2, 4, ... samples by the
  shared probe (``medsoft_aug.batchsize``: peak allocated memory against reserved + free, 10% margin,
  interpolation, accelerate's ``find_executable_batch_size``). The probe uses the stage's own training samples
  (repeated when the batch is larger than the set) and a generator of its own; afterwards the trainable weights,
  the optimizer (empty again), gradients and the global RNG states are restored exactly, so the run starts as if
  no probe had run. With ``--compile`` the eager step is measured (compiling every probed size would take minutes
  each). Under several processes each probes without gradient synchronisation and all use the smallest choice.
* ``auto`` elsewhere (CPU, MPS): the fixed :data:`CPU_BATCH_SIZE` (the default ``--batch-size``).

``auto`` chooses the micro-batch only: ``--grad-accum`` still multiplies it (samples per optimizer step =
micro-batch x grad-accum x processes), so the effective batch of an ``auto`` run depends on the device.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..batchsize import MAX_BATCH, fixed_batch_size, parse_batch_size, probe_batch_size
from .checkpoints import STATE_FILE, resolve_checkpoint

log = logging.getLogger("medsoft_aug.train.autobatch")

CPU_BATCH_SIZE = 4          # --batch-size auto without CUDA (= the default --batch-size)


def resolve_batch(requested: int | str, task, dataset, accelerator, prepared, optimizer, resume,
                  limit: int = MAX_BATCH) -> dict[str, Any]:
    """The stage's batch record (``size``, ``how`` and, when probed, the probe's figures); see the module doc."""
    if parse_batch_size(requested) != "auto":
        return fixed_batch_size(requested, CPU_BATCH_SIZE)
    recorded = recorded_batch(accelerator.project_dir, resume)
    if recorded is not None:
        log.info("%s: --batch-size auto: %d, as recorded in the checkpoint resumed from", task.name,
                 recorded["size"])
        return recorded
    if not probe_here(accelerator):
        return fixed_batch_size("auto", CPU_BATCH_SIZE)
    return agree(probe_train_batch(task, dataset, accelerator, prepared, optimizer, limit), accelerator)


def probe_here(accelerator) -> bool:
    """Whether ``auto`` is measured on this accelerator's device (CUDA) rather than the fixed CPU default."""
    return torch.device(accelerator.device).type == "cuda"


def recorded_batch(project_dir: str | Path, resume) -> Optional[dict[str, Any]]:
    """The batch record of the checkpoint a run resumes from (None when it starts afresh); a checkpoint written
    before records existed gives its signature's size (``how: "checkpoint"``)."""
    ckpt = resolve_checkpoint(project_dir, resume)
    if ckpt is None:
        return None
    state = json.loads((ckpt / STATE_FILE).read_text())
    rec = state.get("batch")
    if not isinstance(rec, dict) or int(rec.get("size", 0)) != int(state["batch_size"]):
        rec = {"size": int(state["batch_size"]), "how": "checkpoint"}
    return dict(rec)


def agree(rec: dict[str, Any], accelerator) -> dict[str, Any]:
    """Several processes: every one trains with the smallest size any of them chose (the sample stream and the
    checkpoint signature need one size)."""
    if accelerator.num_processes == 1:
        return rec
    sizes = accelerator.gather(torch.tensor([int(rec["size"])], device=accelerator.device)).tolist()
    return {**rec, "size": int(min(sizes)), "per_process": [int(s) for s in sizes]}


def probe_train_batch(task, dataset, accelerator, prepared, optimizer, limit: int = MAX_BATCH) -> dict[str, Any]:
    """Probe one training step of ``task`` (see the module doc); weights, optimizer, gradients and RNG states
    are as before when it returns or raises."""
    inner = getattr(optimizer, "optimizer", optimizer)          # accelerate's wrapper skips steps off-sync
    if any(inner.state.values()):
        raise RuntimeError("the batch-size probe needs an optimizer that has not stepped yet")
    device = torch.device(accelerator.device)
    modules = [accelerator.unwrap_model(m) for m in prepared]
    saved = [{n: p.detach().to("cpu", copy=True) for n, p in m.named_parameters() if p.requires_grad}
             for m in modules]
    for m in prepared:
        m.train()
    step = training_step(task, dataset, accelerator, prepared, inner)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return probe_batch_size(step, device, limit=limit)
    finally:
        inner.zero_grad(set_to_none=True)
        inner.state.clear()
        with torch.no_grad():
            for m, state in zip(modules, saved):
                own = dict(m.named_parameters())
                for n, t in state.items():
                    own[n].copy_(t)


def training_step(task, dataset, accelerator, prepared, inner) -> Callable[[int], None]:
    """``step(size)``: forward + backward + optimizer step of ``task`` on ``size`` training samples."""
    from .data import collate

    device = accelerator.device
    generator = torch.Generator(device).manual_seed(0)     # not the run's generator

    def step(size: int) -> None:
        inner.zero_grad(set_to_none=True)
        items = collate([dataset[i % len(dataset)] for i in range(size)])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in items.items()}
        with contextlib.ExitStack() as stack:
            if accelerator.num_processes > 1:                           # no collective: sizes differ per process
                for m in prepared:
                    stack.enter_context(accelerator.no_sync(m))
            loss, _logs = task.loss(batch, generator)
            accelerator.backward(loss)
        inner.step()
        inner.zero_grad(set_to_none=True)

    return step

"""The training engine, written once: any ``TrainTask`` under Hugging Face accelerate.

What it gives every stage: AdamW (lr 1e-4, weight decay 0.01 as in the paper), mixed precision, gradient
accumulation, DDP through ``accelerate launch`` (only the main process writes model files), a seeded sample stream
and noise generator, checkpoints every N steps with rotation (``ProjectConfiguration(automatic_checkpoint_naming=
True, total_limit=K)``) and exact resumption: a run stopped at step k and resumed ends with the same weights as one
that never stopped.

Determinism. Step s, micro-batch a, process r reads positions ``[(s*A + a)*B*W + r*B, ... + B)`` of an endless
stream made of per-epoch permutations seeded by (seed, epoch) - so the order depends on the step only, never on
dataloader state. Noise, timesteps and CFG dropout come from one ``torch.Generator`` per process (seed, rank),
whose state is checkpointed. A resume must use the same batch size, accumulation and process count (checked).

Checkpoint folder ``<project_dir>/checkpoints/checkpoint_<i>/`` holds: ``trainable_<m>.safetensors`` (only the
trainable tensors of each prepared module, via accelerate's save/load hooks - not the frozen base), accelerate's
``optimizer.bin`` and ``random_states_<r>.pkl`` (pickles written by this tool; accelerate reloads them with
``torch.load(weights_only=True)``), ``generator_<r>.safetensors`` and, written last as the completeness marker,
``trainer_state.json``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import InputError, UsageError
from ..fsutil import atomic_path, atomic_write_json
from ..progress import ProgressFn, report

log = logging.getLogger("medsoft_aug.train.loop")

STATE_FILE = "trainer_state.json"


@dataclass
class LoopConfig:
    """Engine settings (the training arguments recorded in medsoft_model.json)."""

    max_steps: int = 1000               # optimizer steps
    batch_size: int = 4                 # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    mixed_precision: str = "no"         # no | fp16 | bf16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500         # steps; 0 = no intermediate checkpoints
    checkpoints_keep: int = 2
    seed: int = 0
    eval_every: int = 0                 # steps; 0 = at checkpoints and at the end
    eval_batches: int = 8               # at most this many validation batches per evaluation
    log_every: int = 0                  # steps; 0 = about 10 log lines per run
    num_workers: int = 0

    def validate(self) -> None:
        checks = [(self.max_steps >= 1, "--max-steps must be >= 1"), (self.batch_size >= 1, "--batch-size must be >= 1"),
                  (self.grad_accum >= 1, "--grad-accum must be >= 1"),
                  (self.mixed_precision in ("no", "fp16", "bf16"), "--mixed-precision must be no, fp16 or bf16"),
                  (self.checkpoint_every >= 0, "--checkpoint-every must be >= 0"),
                  (self.checkpoints_keep >= 1, "--checkpoints-keep must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)


@dataclass
class LoopResult:
    task: str
    steps: int
    resumed_from: int | None
    train_loss: float | None            # mean over the last log interval
    val: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    samples_per_s: float = 0.0


def make_accelerator(config: LoopConfig, project_dir: str | Path, cpu: bool = False):
    """An ``Accelerator`` with the project's checkpoint policy (rotation keeps ``checkpoints_keep``)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    pc = ProjectConfiguration(project_dir=str(project_dir), automatic_checkpoint_naming=True,
                              total_limit=config.checkpoints_keep)
    return Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                       project_config=pc, cpu=cpu)


def weight_dtype(accelerator) -> torch.dtype:
    """dtype for frozen weights: the mixed-precision dtype, else float32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(str(accelerator.mixed_precision), torch.float32)


class StreamBatchSampler:
    """Endless per-process batches of dataset indices, a pure function of (seed, step) - see module docstring."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start_batch: int = 0):
        if n < 1:
            raise InputError("no training samples")
        self.n, self.bs, self.seed, self.rank, self.world, self.start = n, batch_size, seed, rank, world, start_batch

    @lru_cache(maxsize=4)
    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        j = self.start
        while True:
            p0 = j * self.bs * self.world + self.rank * self.bs
            yield [self._perm(p // self.n)[p % self.n] for p in range(p0, p0 + self.bs)]
            j += 1


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


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _evaluate(task, val_dataset, accelerator, config: LoopConfig, modules) -> dict[str, float]:
    """Mean of ``task.evaluate`` over at most ``eval_batches`` validation batches in fixed order."""
    from .data import collate

    if val_dataset is None or len(val_dataset) == 0 or not hasattr(task, "evaluate"):
        return {}
    for m in modules:
        m.eval()
    sums: dict[str, float] = {}
    count = 0
    with torch.no_grad(), accelerator.autocast():
        for b0 in range(0, min(len(val_dataset), config.eval_batches * config.batch_size), config.batch_size):
            items = [val_dataset[i] for i in range(b0, min(b0 + config.batch_size, len(val_dataset)))]
            metrics = task.evaluate(_to_device(collate(items), accelerator.device))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(items)
            count += len(items)
    for m in modules:
        m.train()
    return {f"val_{k}": v / count for k, v in sums.items()}


def run_task(task, dataset, *, accelerator, config: LoopConfig, val_dataset=None, resume: str | Path | None = None,
             on_progress: ProgressFn = None, stop_after: int | None = None) -> LoopResult:
    """Train ``task`` on ``dataset`` for ``config.max_steps`` optimizer steps under ``accelerator``.

    ``accelerator`` comes from :func:`make_accelerator` (its project_dir is where checkpoints go). ``resume`` is
    None, "latest" (continue from the newest complete checkpoint when there is one) or a checkpoint folder.
    ``stop_after`` ends the run after that many steps (as if killed), for tests and time-boxed jobs.
    Progress: ``on_progress(f"train {task.name}", step, max_steps)``.
    """
    from safetensors.torch import load_file, save_file
    from torch.utils.data import DataLoader

    from accelerate.utils import set_seed

    from .data import collate

    config.validate()
    set_seed(config.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    if hasattr(task, "setup"):
        task.setup(accelerator.device, weight_dtype(accelerator), dataset)
    if config.gradient_checkpointing and hasattr(task, "enable_gradient_checkpointing"):
        task.enable_gradient_checkpointing()
    modules = task.trainable_modules()
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if not params:
        raise UsageError(f"stage {task.name}: nothing to train")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    *prepared, optimizer = accelerator.prepare(*modules, optimizer)
    if hasattr(task, "bind"):
        task.bind(list(prepared))
    elif any(p is not m for p, m in zip(prepared, modules)):
        # The task would run forwards outside the DDP wrapper: gradients would not be averaged across processes.
        raise UsageError(f"stage {task.name} cannot run on {world} processes: its task has no bind() method")

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for i, m in enumerate(models):
                with atomic_path(Path(output_dir) / f"trainable_{i}.safetensors") as tmp:
                    save_file(trainable_state(accelerator.unwrap_model(m)), str(tmp))
        weights.clear()             # the frozen base is not checkpointed

    def load_hook(models, input_dir):
        for i, m in enumerate(models):
            _load_trainable(accelerator.unwrap_model(m), Path(input_dir) / f"trainable_{i}.safetensors")
        models.clear()

    handles = [accelerator.register_save_state_pre_hook(save_hook),
               accelerator.register_load_state_pre_hook(load_hook)]
    generator = torch.Generator(accelerator.device).manual_seed(config.seed * 7919 + 104_729 * rank + 1)
    signature = {"task": task.name, "world": world, "batch_size": config.batch_size,
                 "grad_accum": config.grad_accum, "dataset_size": len(dataset), "seed": config.seed}
    step, history, resumed_from = 0, [], None
    try:
        ckpt = resolve_checkpoint(accelerator.project_dir, resume)
        if ckpt is not None:
            state = json.loads((ckpt / STATE_FILE).read_text())
            diff = {k: (state.get(k), v) for k, v in signature.items() if state.get(k) != v}
            if diff:
                raise UsageError(f"cannot resume from {ckpt.name}: it was made with different settings "
                                 + ", ".join(f"{k}={a} (now {b})" for k, (a, b) in diff.items()))
            accelerator.load_state(str(ckpt))
            generator.set_state(load_file(str(ckpt / f"generator_{rank}.safetensors"))["state"].to(
                generator.get_state().device))
            step = resumed_from = int(state["step"])
            history = list(state.get("history", []))
            accelerator.project_configuration.iteration = int(ckpt.name.split("_")[-1]) + 1
            log.info("%s: resumed from %s at step %d", task.name, ckpt.name, step)
        elif resume is not None:
            log.info("%s: no checkpoint to resume from; starting at step 0", task.name)
        if (val_dataset is None or len(val_dataset) == 0) and accelerator.is_main_process:
            log.info("%s: no validation samples (no val split in WORK): validation metrics skipped", task.name)

        sampler = StreamBatchSampler(len(dataset), config.batch_size, config.seed, rank, world,
                                     start_batch=step * config.grad_accum)
        loader = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,     # own generator: the
                                 num_workers=config.num_workers,                  # global RNG restored from a
                                 generator=torch.Generator().manual_seed(config.seed),    # checkpoint stays
                                 pin_memory=accelerator.device.type == "cuda"))   # as saved

        log_every = config.log_every or max(1, config.max_steps // 10)
        eval_every = config.eval_every or config.checkpoint_every or config.max_steps
        last = stop_after if stop_after is not None else config.max_steps
        stage = f"train {task.name}"
        loss_sum, loss_n, t0, seen = 0.0, 0, time.time(), 0
        last_train, val = None, {}
        for m in prepared:
            m.train()
        progress = on_progress if accelerator.is_main_process else None
        report(progress, stage, step, config.max_steps)
        while step < min(last, config.max_steps):
            for _ in range(config.grad_accum):
                batch = _to_device(next(loader), accelerator.device)
                with accelerator.accumulate(*prepared):
                    loss, _logs = task.loss(batch, generator)
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
                seen += batch["image"].shape[0] * world
            step += 1
            if hasattr(task, "after_step"):                        # e.g. an EMA update of the trained weights
                task.after_step(step)
            if not math.isfinite(loss_sum):
                raise UsageError(f"stage {task.name}: the loss became non-finite at step {step}; "
                                 "lower the learning rate or use bf16 instead of fp16")
            entry = None
            if step % log_every == 0 or step == config.max_steps:
                last_train = loss_sum / max(loss_n, 1)
                if world > 1:                                       # mean over processes (same step on all)
                    last_train = float(accelerator.reduce(torch.tensor(last_train, device=accelerator.device),
                                                          reduction="mean"))
                entry = {"step": step, "train_loss": last_train}
                loss_sum, loss_n = 0.0, 0
            if step % eval_every == 0 or step == config.max_steps:
                val = _evaluate(task, val_dataset, accelerator, config, prepared)
                entry = {**(entry or {"step": step}), **val}
            if entry:
                history.append(entry)
            if entry and accelerator.is_main_process:
                log.info("%s step %d/%d %s", task.name, step, config.max_steps,
                         " ".join(f"{k}={v:.4g}" for k, v in entry.items() if k != "step"))
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.max_steps:
                _save_checkpoint(accelerator, generator, {**signature, "step": step, "history": history})
            report(progress, stage, step, config.max_steps)
        wall = time.time() - t0
        return LoopResult(task=task.name, steps=step, resumed_from=resumed_from, train_loss=last_train, val=val,
                          history=history, wall_s=wall, samples_per_s=seen / wall if wall > 0 else 0.0)
    finally:
        for h in handles:
            h.remove()


def _save_checkpoint(accelerator, generator: torch.Generator, state: dict) -> Path:
    import shutil

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


def config_dict(config: LoopConfig) -> dict[str, Any]:
    return asdict(config)

"""The training engine, written once: any ``TrainTask`` under Hugging Face accelerate.

What it gives every stage: AdamW (lr 1e-4, weight decay 0.01 as in the paper), mixed precision (``no`` / ``fp16``
/ ``bf16``: accelerate's autocast; frozen weights in that dtype, trained ones in float32), gradient accumulation,
DDP through ``accelerate launch`` (only the main process writes model files), a seeded sample stream and noise
generator, checkpoints every N steps with rotation and exact resumption (``checkpoints.py``): a run stopped at step
k and resumed ends with the same weights as one that never stopped.

Determinism. Step s, micro-batch a, process r reads positions ``[(s*A + a)*B*W + r*B, ... + B)`` of an endless
stream made of per-epoch permutations seeded by (seed, epoch) - so the order depends on the step only, never on
dataloader state or on how many worker processes read it (``num_workers``: the batches arrive in sampler order
whatever the workers' timing; the workers live for the whole run, one endless iterator, never restarted per
epoch; pinned memory and non-blocking copies on CUDA). Noise, timesteps and CFG dropout come from one
``torch.Generator`` per process (seed, rank), whose state is checkpointed. A resume must use the same batch size,
accumulation, process count and cache batch (checked).

Speed options (each tested on the CPU against the plain path): ``gradient_checkpointing`` (the task's
``enable_gradient_checkpointing``; same loss and gradients), ``compile`` (``torch.compile`` of the model the task
trains, via its ``compile_model(backend)``; tasks without one - the small MSC - run eager). The running loss is
summed on the device and read back only at log steps, so a step never waits for the GPU.
"""
from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import InputError, UsageError
from ..progress import ProgressFn, report
from .autobatch import resolve_batch
from .checkpoints import (STATE_FILE, list_checkpoints, register_hooks, resolve_checkpoint,  # noqa: F401
                          resume_state, save_checkpoint, trainable_state)

log = logging.getLogger("medsoft_aug.train.loop")

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class LoopConfig:
    """Engine settings (the training arguments recorded in medsoft_model.json)."""

    max_steps: int = 1000               # optimizer steps
    batch_size: int | str = 4           # per process, per micro-batch; "auto": chosen by autobatch.py
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
    num_workers: int = 0                # data-loader worker processes (0: read in the training process)
    compile: bool = False               # torch.compile the task's trained model (the UNet)
    compile_backend: str = "inductor"

    def validate(self) -> None:
        bs_ok = self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size >= 1)
        checks = [(self.max_steps >= 1, "--max-steps must be >= 1"),
                  (bs_ok, f"--batch-size must be an integer >= 1 or auto, got {self.batch_size!r}"),
                  (self.grad_accum >= 1, "--grad-accum must be >= 1"),
                  (self.mixed_precision in MIXED_PRECISION, "--mixed-precision must be no, fp16 or bf16"),
                  (self.checkpoint_every >= 0, "--checkpoint-every must be >= 0"),
                  (self.checkpoints_keep >= 1, "--checkpoints-keep must be >= 1"),
                  (self.num_workers >= 0, "--num-workers must be >= 0")]
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
    batch: dict[str, Any] = field(default_factory=dict)      # the micro-batch used and how it was chosen


def make_accelerator(config: LoopConfig, project_dir: str | Path, cpu: bool = False):
    """An ``Accelerator`` with the project's checkpoint policy (rotation keeps ``checkpoints_keep``).

    accelerate keeps one process-wide state: a second accelerator in the same process (a notebook, the test
    suite) with another mixed precision or device resets it first (the process group, if any, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    state = AcceleratorState._shared_state
    if state and (state.get("_mixed_precision") != config.mixed_precision
                  or (cpu and getattr(state.get("device"), "type", "cpu") != "cpu")):
        AcceleratorState._reset_state()
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


def stream_loader(dataset, config: LoopConfig, rank: int, world: int, start_batch: int, device) -> Iterator[dict]:
    """The seeded sample stream from batch ``start_batch`` on, read by ``config.num_workers`` worker processes
    (pinned memory on CUDA). Its own generator: the global RNG restored from a checkpoint stays as saved."""
    from torch.utils.data import DataLoader

    from .data import collate

    sampler = StreamBatchSampler(len(dataset), config.batch_size, config.seed, rank, world, start_batch=start_batch)
    workers = config.num_workers
    return iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                           generator=torch.Generator().manual_seed(config.seed),
                           pin_memory=torch.device(device).type == "cuda",
                           prefetch_factor=4 if workers else None))


def to_device(batch: dict, device) -> dict:
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
            metrics = task.evaluate(to_device(collate(items), accelerator.device))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(items)
            count += len(items)
    for m in modules:
        m.train()
    return {f"val_{k}": v / count for k, v in sums.items()}


@dataclass
class _Run:
    """What changes while a run steps: position, history and the running loss (summed on the device)."""

    step: int
    history: list[dict[str, Any]]
    resumed_from: int | None
    loss_sum: Any = 0.0                 # a float64 tensor on the device once a step ran
    loss_n: int = 0
    seen: int = 0
    last_train: float | None = None
    val: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.time)


def run_task(task, dataset, *, accelerator, config: LoopConfig, val_dataset=None, resume: str | Path | None = None,
             on_progress: ProgressFn = None, stop_after: int | None = None) -> LoopResult:
    """Train ``task`` on ``dataset`` for ``config.max_steps`` optimizer steps under ``accelerator``.

    ``accelerator`` comes from :func:`make_accelerator` (its project_dir is where checkpoints go). ``resume`` is
    None, "latest" (continue from the newest complete checkpoint when there is one) or a checkpoint folder.
    ``stop_after`` ends the run after that many steps (as if killed), for tests and time-boxed jobs.
    ``config.batch_size`` "auto": chosen before the first step (``autobatch.resolve_batch``: the resumed
    checkpoint's size, a probe on CUDA, else the CPU default); recorded in checkpoints and ``LoopResult.batch``.
    Progress: ``on_progress(f"cache {task.name}", samples, n)`` while the task fills its caches (tasks whose
    ``setup`` takes ``on_progress``), then ``on_progress(f"train {task.name}", step, max_steps)``.
    """
    from accelerate.utils import set_seed

    # 1. options and seed; the task's frozen parts and per-sample caches on the device
    config.validate()
    set_seed(config.seed)
    progress = on_progress if accelerator.is_main_process else None
    _setup_task(task, dataset, accelerator, config, progress)
    # 2. optimizer over the trainable tensors; accelerate prepares both (DDP, autocast); the task trains through
    #    them; the micro-batch (``auto``: probed on CUDA before anything is compiled)
    prepared, optimizer = _prepare(task, accelerator, config)
    config, batch = _micro_batch(task, dataset, accelerator, config, prepared, optimizer, resume)
    handles = register_hooks(accelerator)
    rank, world = accelerator.process_index, accelerator.num_processes
    generator = torch.Generator(accelerator.device).manual_seed(config.seed * 7919 + 104_729 * rank + 1)
    signature = {"task": task.name, "world": world, "batch_size": config.batch_size,
                 "grad_accum": config.grad_accum, "dataset_size": len(dataset), "seed": config.seed}
    if hasattr(task, "cache_batch"):
        signature["cache_batch"] = task.cache_batch     # cached features depend on how they were batched
    try:
        # 3. resume: weights, optimizer, RNG states, generator and history of the checkpoint (signature checked)
        run = _Run(*resume_state(accelerator, generator, signature, resume, task.name))
        if (val_dataset is None or len(val_dataset) == 0) and accelerator.is_main_process:
            log.info("%s: no validation samples (no val split in WORK): validation metrics skipped", task.name)
        # 4. the seeded sample stream, from the step reached
        loader = stream_loader(dataset, config, rank, world, run.step * config.grad_accum, accelerator.device)
        # 5. steps: accumulate, then log / evaluate / checkpoint at their intervals
        for m in prepared:
            m.train()
        report(progress, f"train {task.name}", run.step, config.max_steps)
        last = min(stop_after if stop_after is not None else config.max_steps, config.max_steps)
        while run.step < last:
            _step(task, loader, prepared, optimizer, accelerator, config, generator, run)
            _after_step(task, val_dataset, accelerator, config, prepared, generator, signature, run, batch)
            report(progress, f"train {task.name}", run.step, config.max_steps)
        wall = time.time() - run.t0
        return LoopResult(task=task.name, steps=run.step, resumed_from=run.resumed_from, train_loss=run.last_train,
                          val=run.val, history=run.history, wall_s=wall,
                          samples_per_s=run.seen / wall if wall > 0 else 0.0, batch=batch)
    finally:
        for h in handles:
            h.remove()


def _setup_task(task, dataset, accelerator, config: LoopConfig, progress: ProgressFn) -> None:
    """``task.setup`` (frozen parts to the device in the mixed-precision dtype, caches filled with progress), then
    gradient checkpointing when asked for."""
    if hasattr(task, "setup"):
        kw = {"on_progress": progress} if "on_progress" in inspect.signature(task.setup).parameters else {}
        task.setup(accelerator.device, weight_dtype(accelerator), dataset, **kw)
    if config.gradient_checkpointing and hasattr(task, "enable_gradient_checkpointing"):
        task.enable_gradient_checkpointing()


def _prepare(task, accelerator, config: LoopConfig) -> tuple[list[torch.nn.Module], Any]:
    """AdamW over the task's trainable tensors; modules and optimizer prepared by accelerate and bound to the
    task."""
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
        raise UsageError(f"stage {task.name} cannot run on {accelerator.num_processes} processes: "
                         "its task has no bind() method")
    return list(prepared), optimizer


def _micro_batch(task, dataset, accelerator, config: LoopConfig, prepared, optimizer,
                 resume) -> tuple[LoopConfig, dict[str, Any]]:
    """The config with its micro-batch resolved (``autobatch.resolve_batch``: given, the resumed checkpoint's,
    probed on CUDA before anything is compiled, or the CPU default) and the batch record; then ``--compile``."""
    batch = resolve_batch(config.batch_size, task, dataset, accelerator, prepared, optimizer, resume)
    config = replace(config, batch_size=int(batch["size"]))
    if config.compile and hasattr(task, "compile_model"):
        task.compile_model(config.compile_backend)
    return config, batch


def _step(task, loader, prepared, optimizer, accelerator, config: LoopConfig, generator, run: _Run) -> None:
    """One optimizer step: ``grad_accum`` micro-batches, each forward + backward (the update on the last)."""
    for _ in range(config.grad_accum):
        batch = to_device(next(loader), accelerator.device)
        with accelerator.accumulate(*prepared):
            loss, _logs = task.loss(batch, generator)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        run.loss_sum = run.loss_sum + loss.detach().to(torch.float64)      # no host sync
        run.loss_n += 1
        run.seen += batch["image"].shape[0] * accelerator.num_processes
    run.step += 1
    if hasattr(task, "after_step"):                        # e.g. an EMA update of the trained weights
        task.after_step(run.step)


def _after_step(task, val_dataset, accelerator, config: LoopConfig, prepared, generator, signature: dict,
                run: _Run, batch: dict) -> None:
    """At their intervals: the mean train loss (checked finite), validation metrics, a checkpoint (with the
    batch record, which a resumed ``--batch-size auto`` run reuses)."""
    log_every = config.log_every or max(1, config.max_steps // 10)
    eval_every = config.eval_every or config.checkpoint_every or config.max_steps
    final = run.step == config.max_steps
    entry = None
    if run.step % log_every == 0 or final:
        run.last_train = float(run.loss_sum) / max(run.loss_n, 1)
        if not math.isfinite(run.last_train):
            raise UsageError(f"stage {task.name}: the loss became non-finite by step {run.step}; "
                             "lower the learning rate or use bf16 instead of fp16")
        if accelerator.num_processes > 1:                  # mean over processes (same step on all)
            run.last_train = float(accelerator.reduce(torch.tensor(run.last_train, device=accelerator.device),
                                                      reduction="mean"))
        entry = {"step": run.step, "train_loss": run.last_train}
        run.loss_sum, run.loss_n = 0.0, 0
    if run.step % eval_every == 0 or final:
        run.val = _evaluate(task, val_dataset, accelerator, config, prepared)
        entry = {**(entry or {"step": run.step}), **run.val}
    if entry:
        run.history.append(entry)
        if accelerator.is_main_process:
            log.info("%s step %d/%d %s", task.name, run.step, config.max_steps,
                     " ".join(f"{k}={v:.4g}" for k, v in entry.items() if k != "step"))
    if config.checkpoint_every and run.step % config.checkpoint_every == 0 and not final:
        save_checkpoint(accelerator, generator, {**signature, "step": run.step, "history": run.history,
                                                 "batch": batch})


def config_dict(config: LoopConfig) -> dict[str, Any]:
    return asdict(config)

"""``balance --batch-size auto``: the largest engine batch that fits the device, measured, not guessed.

The probe loop, the arithmetic and the parser are shared with ``train`` (``medsoft_aug.batchsize``, re-exported
here); what is balance's own is the step it measures and its CPU default. On CUDA the step is one denoising step
of the real engine (prompt encoding, e_MSC, VAE encode, one CFG UNet step on 2B rows, VAE decode;
``runner.Generator.probe_step``), probed at batch sizes 1, 2, 4, ... up to the rows the run needs.

Elsewhere (CPU, MPS) the batch size is the fixed :data:`CPU_BATCH_SIZE`: RAM is rarely the limit there and
throughput hardly depends on it. Outputs never depend on the batch size (each row has its own seed, mask,
prompt and e_MSC; selection is per sample), so ``auto`` changes speed only; the choice and the probe's figures
are recorded in balance.json (``batch``).
"""
from __future__ import annotations

from typing import Any

from ..batchsize import (MARGIN, MAX_BATCH, choose_batch_size, next_probe,  # noqa: F401 - balance's API
                         parse_batch_size, probe_batch_size)
from ..batchsize import fixed_batch_size as _fixed

CPU_BATCH_SIZE = 8          # --batch-size auto without CUDA (= the default --batch-size)


def fixed_batch_size(requested: int | str) -> dict[str, Any]:
    """balance.json's ``batch`` record without probing: a given size, or ``auto`` off CUDA (:data:`CPU_BATCH_SIZE`)."""
    return _fixed(requested, CPU_BATCH_SIZE)

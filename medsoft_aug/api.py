"""The Python API: one plain function per stage. Functions return result objects; they never print or exit.

The CLI (``medsoft_aug.cli``) is a thin shim over these. Heavy stages (train, balance, evaluate) import torch
only when used, so ``medsoft-aug --help``, ``ingest`` and ``masks build`` start fast.
"""
from __future__ import annotations

import importlib
import platform
from typing import Any

# name -> "module:attribute"; resolved lazily (PEP 562) so the real signatures and docstrings are kept.
_STAGES = {
    "ingest": "medsoft_aug.ingest.stage:ingest",
    "build_masks": "medsoft_aug.masks.stage:build_masks",
    "train": "medsoft_aug.train.stage:train",
    "plan_balance": "medsoft_aug.generate.plan:plan_balance",
    "balance": "medsoft_aug.generate.stage:balance",
    "merge_manifests": "medsoft_aug.manifest:merge_manifests",
    "evaluate_quality": "medsoft_aug.evaluate.quality:evaluate_quality",
    "evaluate_classify": "medsoft_aug.evaluate.classify:evaluate_classify",
    "evaluate_report": "medsoft_aug.evaluate.report:evaluate_report",
    "demo": "medsoft_aug.demo:demo",
    "make_sample_data": "medsoft_aug.sample_data:make_sample_data",
}

# Options dataclasses of the stages that take one (the stage also takes its fields as keyword arguments).
_OPTIONS = {
    "BalanceOptions": "medsoft_aug.generate.options:BalanceOptions",
}

__all__ = sorted([*_STAGES, *_OPTIONS, "environment_info"])


def __getattr__(name: str) -> Any:
    if name in _STAGES or name in _OPTIONS:
        mod, attr = {**_STAGES, **_OPTIONS}[name].split(":")
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(name)


def environment_info() -> dict[str, Any]:
    """Versions of the package and its main dependencies, and CUDA availability (no GPU required)."""
    from .versions import package_versions

    versions = package_versions()
    info: dict[str, Any] = {"medsoft_aug": versions.pop("medsoft_aug"), "python": platform.python_version(),
                            "platform": platform.platform(), **versions}
    try:
        import torch

        info["cuda_available"] = bool(torch.cuda.is_available())
        info["cuda_version"] = torch.version.cuda
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["mps_available"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    except Exception as e:  # noqa: BLE001 - report, do not fail: info must work on a broken install
        info["cuda_available"] = False
        info["torch_error"] = f"{type(e).__name__}: {e}"
    return info

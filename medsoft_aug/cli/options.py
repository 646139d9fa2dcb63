"""Choices and options shared by the commands. Enums make Typer list the choices in ``--help`` and refuse others
with a usage error (exit 2); the commands pass ``.value`` (a plain string) to :mod:`medsoft_aug.api`."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class Layout(str, Enum):
    generic = "generic"
    rsna2024 = "rsna2024"


class MaskSource(str, Enum):
    auto = "auto"
    seg = "seg"
    coords = "coords"


NUMBERINGS = ("auto", "verse", "totalseg", "totalseg-mr")
# TotalSegmentator's own task names, accepted for the numbering choices they stand for.
NUMBERING_ALIASES = {"total": "totalseg", "total_mr": "totalseg-mr", "total-mr": "totalseg-mr"}


def parse_numbering(text: str) -> str:
    """``--numbering``: one of :data:`NUMBERINGS`, or TotalSegmentator's task names ``total`` / ``total_mr``."""
    v = NUMBERING_ALIASES.get(text.strip().lower(), text.strip().lower())
    if v not in NUMBERINGS:
        raise typer.BadParameter(f"{text!r} is not one of {', '.join(NUMBERINGS)} (or total, total_mr)")
    return v


class TrainStage(str, Enum):
    all = "all"
    msc = "msc"
    smis = "smis"


class MaskMode(str, Enum):
    soft = "soft"
    hard = "hard"


class TrainUnet(str, Enum):
    none = "none"
    full = "full"


class MixedPrecision(str, Enum):
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


class TrainDevice(str, Enum):
    auto = "auto"
    cpu = "cpu"


class Scorer(str, Enum):
    feature = "feature"
    classifier = "classifier"


class PromptMode(str, Enum):
    auto = "auto"
    descriptions = "descriptions"
    file = "file"


class OutputFormat(str, Enum):
    png = "png"
    nifti = "nifti"
    dicom = "dicom"


class Blend(str, Enum):
    masked = "masked"
    donor = "donor"


class Negatives(str, Enum):          # = generate.plan.NEGATIVE_MODES
    none = "none"
    other_classes = "other-classes"


class Geometry(str, Enum):
    crop = "crop"
    pad = "pad"


class Scheduler(str, Enum):          # = generate.options.SCHEDULERS
    ddim = "ddim"
    dpmsolver = "dpmsolver++"
    unipc = "unipc"


class DType(str, Enum):              # auto + generate.fastpath.DTYPES
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


def value(choice: Optional[Enum]) -> Optional[str]:
    """The plain string of an Enum choice (None stays None)."""
    return None if choice is None else str(choice.value)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (on failure: "
                                       "{\"error\": ..., \"exit_code\": ...}).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available, else CPU), cpu, cuda or "
                                        "cuda:N.")]
WorkArg = Annotated[Path, typer.Argument(help="WORK folder written by `ingest` and `masks build`.")]

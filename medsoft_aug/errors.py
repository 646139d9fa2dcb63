"""Project exceptions. Each carries the process exit code the CLI turns it into.

Exit codes (documented in the README): 0 ok; 1 unexpected failure; 2 usage error;
3 invalid input data (nothing written); 4 partial success (some samples failed, listed); 5 system error
(disk full, no permission: ``cli.output.SYSTEM_ERRNOS``).
Messages must never contain patient data (names, IDs from DICOM headers, pixel values):
name the sample by its ``sample_id`` from the labels CSV and the problem.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class MedsoftError(Exception):
    """Base class: a failure the user can fix; printed as one ``Error: ...`` line."""

    exit_code = 1


class UsageError(MedsoftError):
    """Bad combination of options (exit 2)."""

    exit_code = 2


class InputError(MedsoftError):
    """Invalid input data: missing/corrupt files, bad CSV, unknown class, ... (exit 3)."""

    exit_code = 3


class ModelError(InputError):
    """A model folder or reference that cannot be used (missing, wrong base, corrupt) (exit 3)."""


class DeviceError(MedsoftError):
    """The machine cannot run what was asked, e.g. a mixed precision its device lacks (exit 3)."""

    exit_code = 3


@dataclass
class SampleFailure:
    sample_id: str
    problem: str

    def __str__(self) -> str:
        return f"{self.sample_id}: {self.problem}"


class PartialFailure(MedsoftError):
    """Some samples succeeded and outputs were written for them; the rest are listed (exit 4)."""

    exit_code = 4

    def __init__(self, message: str, failures: list[SampleFailure], result: object = None):
        super().__init__(message)
        self.failures = failures
        self.result = result


@dataclass
class FailureList:
    """Collects per-sample failures during a stage."""

    items: list[SampleFailure] = field(default_factory=list)

    def add(self, sample_id: str, problem: str) -> None:
        self.items.append(SampleFailure(str(sample_id), problem))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

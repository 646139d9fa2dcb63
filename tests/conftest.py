"""Shared test setup: offline, quiet, deterministic. Area-specific fixtures live in tests/_<area>_helpers.py."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# ../shared next to the checkout (also from a git worktree one folder deeper, e.g. wt/NAME), or $MEDSOFT_AUG_SHARED
SHARED = next((p for p in (Path(os.environ.get("MEDSOFT_AUG_SHARED", REPO.parent / "shared")),
                           REPO.parent.parent / "shared") if (p / "realdata").is_dir()), REPO.parent / "shared")
REALDATA = SHARED / "realdata"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The shared real public files (read-only). Tests that need them skip when absent."""
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata not available")
    return REALDATA


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    return REPO / "sample_data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real tiny MODEL_DIR written once per session by the real ``train`` stage (see
    ``_balance_helpers.train_tiny_model_dir``). Shared: tests must not write into it (copy it first)."""
    from _balance_helpers import train_tiny_model_dir

    return train_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@dataclass(frozen=True)
class DemoRun:
    """The one `medsoft-aug demo --json` run of a test session: its folder, parsed JSON and captured streams."""
    out: Path
    result: dict[str, Any]
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """`medsoft-aug demo` with its defaults on sample_data/, run once per test session (the most expensive
    command: about a minute on the 2-core CI machine). Shared: tests read it and must not write into ``out``
    (copy it first)."""
    from typer.testing import CliRunner

    from medsoft_aug.cli.app import app

    out = tmp_path_factory.mktemp("demo") / "demo"
    r = CliRunner().invoke(app, ["demo", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    return DemoRun(out, json.loads(r.stdout), r.stdout, r.stderr)

"""Shared test setup: offline, quiet, deterministic. Area-specific fixtures live in tests/_<area>_helpers.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
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

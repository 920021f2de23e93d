"""Shared fixtures: the real data in ../shared/data and small configs built from it."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = (REPO.parent / "shared" / "data").resolve()
sys.path.insert(0, str(REPO / "src"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"the shared data folder {DATA_DIR} is missing (see README: data_dir)")
    return DATA_DIR


@pytest.fixture
def default_config() -> dict:
    with open(REPO / "config" / "config.yaml") as handle:
        return copy.deepcopy(yaml.safe_load(handle))

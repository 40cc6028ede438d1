"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.project import REPO


@pytest.fixture(scope="session")
def download_cache() -> Path:
    """Weights are shared between copies of the project; fetching them is tested once per cache."""
    path = Path(os.environ.get("GLUEFORGE_DOWNLOAD_CACHE", REPO / "artifacts" / "downloads"))
    os.environ["GLUEFORGE_DOWNLOAD_CACHE"] = str(path)
    return path



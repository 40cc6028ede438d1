"""Helpers for tests that run the project as a user would: a clean copy, and doit in it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def project_files(root: Path) -> list[str]:
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.split()
    return sorted({*tracked, *untracked})


def clone_project(dest: Path, artifacts_from: Path | None = None) -> Path:
    """Copy the project's files (not its artifacts) to ``dest``; hard-link ``artifacts_from``'s artifacts."""
    for rel in project_files(REPO):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    if artifacts_from is not None:  # cache entries and bundles are immutable, so links are safe
        shutil.copytree(artifacts_from / "artifacts", dest / "artifacts", copy_function=os.link)
    return dest


def doit(project: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list[str], list[str]]:
    """Run doit in ``project``; return the process, the executed tasks and the up-to-date tasks."""
    pythonpath = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(project)) if p)
    proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=project, capture_output=True, text=True,
                          env={**os.environ, **(env or {}), "PYTHONPATH": pythonpath})
    executed = re.findall(r"^\.  (\S+)", proc.stdout, re.M)
    skipped = re.findall(r"^-- (\S+)", proc.stdout, re.M)
    return proc, executed, skipped

"""The README runs: its Python blocks and its ``sh`` examples, against the bundles the cpu build made (clone A's
store, which holds the README's main command's bundles), in a fresh working directory that sees them as
``artifacts/store`` and holds a photograph pair as ``a.jpg`` and ``b.jpg``. Blocks with placeholders
(``BUNDLE``, ``DIR``) are reference, not examples, and are fenced without a language."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.project import REPO, SHARED_DATA

BLOCK = re.compile(r"^```(python|sh)\n(.*?)^```", re.M | re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall((REPO / "README.md").read_text()) if lang == language]


@pytest.fixture()
def workdir(built, tmp_path) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the photographs live there (set GLUEFORGE_SHARED_DATA)")
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts/store").symlink_to(built / "artifacts/store")
    for name, photo in (("a.jpg", "st_pauls_1.jpg"), ("b.jpg", "st_pauls_2.jpg")):
        (tmp_path / name).symlink_to(SHARED_DATA / "pairs" / photo)
    return tmp_path


def test_the_readme_has_examples():
    assert len(blocks("python")) >= 1 and len(blocks("sh")) >= 1


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs(workdir, index):
    proc = subprocess.run([sys.executable, "-c", blocks("python")[index]], cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sh_examples_run(workdir):
    bin_dir = Path(sys.executable).parent  # the glueforge script of this environment
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    lines = [line for body in blocks("sh") for line in body.splitlines() if line.strip() and not line.startswith("#")]
    assert lines
    for line in lines:
        proc = subprocess.run(["bash", "-c", line], cwd=workdir, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert (workdir / "matches.png").is_file() and (workdir / "artifacts/store/index.html").is_file()
    assert (workdir / "pulled/aliked_t16").is_dir()

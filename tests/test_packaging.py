"""What ``pip install glueforge`` puts into an application's site-packages: one top-level package, glueforge.

The repository keeps exporters/, patches/, runtimes/ and validation/ at its top (the design card names them);
they are glueforge's subpackages (glueforge/<name> links to ../<name>), so the wheel holds them under glueforge/
and an application's own ``runtimes`` or ``validation`` module is never shadowed."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.project import clone_project

PLUGINS = ("exporters", "patches", "runtimes", "validation")


def test_the_wheel_installs_only_glueforge(tmp_path):
    source = clone_project(tmp_path / "source")  # a copy: building leaves build/ and *.egg-info behind
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                           "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("glueforge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"glueforge", wheel.name.split("-py")[0] + ".dist-info"}, \
        sorted({n.split("/")[0] for n in names})
    for plugin in PLUGINS:  # each subpackage's modules, as files
        files = {n for n in names if n.startswith(f"glueforge/{plugin}/") and n.endswith(".py")}
        assert {f"glueforge/{plugin}/{p.name}" for p in (source / plugin).glob("*.py")} == files
    record = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("top_level.txt"))).decode()
    assert record.split() == ["glueforge"]

"""The checked-in CI workflow for the x86 and Jetson runners: it cannot run here, so every
command it calls is checked to exist in the project."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from glueforge.config import Config

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "engines.yml"


def commands(job: dict, matrix_target: str | None = None) -> list[list[str]]:
    out = []
    for step in job["steps"]:
        for line in step.get("run", "").splitlines():
            line = line.strip()
            if not line:
                continue
            line = line.replace("${{ matrix.target }}", matrix_target or "")
            line = re.sub(r"\$\{\{ *inputs\.version *\}\}", "", line)
            line = re.sub(r"\$\{\{ *vars\.(\w+) *\}\}", lambda m: f"s3://bucket/{m.group(1).lower()}", line)
            out.append(shlex.split(line))
    return out


def doit_tasks() -> set[str]:
    listed = subprocess.run([sys.executable, "-m", "doit", "list"], cwd=REPO, capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def test_workflow_commands_exist_in_the_project():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    assert set(jobs) == {"x86", "jetson"}
    config = Config.load(REPO / "models.yaml")
    jetson_targets = jobs["jetson"]["strategy"]["matrix"]["target"]
    assert set(jetson_targets) == {n for n, t in config.project.targets.items() if t.runtime == "tensorrt"}
    assert {"self-hosted", "${{ matrix.target }}"} <= set(jobs["jetson"]["runs-on"])
    assert jobs["jetson"]["needs"] == "x86"

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    tasks = doit_tasks()
    seen = set()
    for job, targets in (("x86", [None]), ("jetson", jetson_targets)):
        for target in targets:
            for cmd in commands(jobs[job], target):
                seen.add(cmd[0])
                if cmd[0] == "pip":
                    extra = re.search(r"\[(\w+)\]", cmd[-1])
                    assert extra and extra.group(1) in extras, cmd
                elif cmd[0] == "doit":
                    names = [arg for arg in cmd[1:] if "=" not in arg]  # doit runs several tasks in one call
                    assert names and set(names) <= tasks, cmd
                    variables = dict(arg.split("=", 1) for arg in cmd[1:] if "=" in arg)
                    config.target(variables["target"])  # raises for an unknown target
                    assert set(variables) <= {"target", "model", "version", "store", "endpoint", "channel", "unvalidated"}
                elif cmd[0] == "glueforge":
                    help_ = subprocess.run([sys.executable, "-m", "glueforge.cli", cmd[1], "--help"], capture_output=True, text=True)
                    assert help_.returncode == 0, cmd
                    options = {a.split("=")[0] for a in cmd if a.startswith("--")}
                    assert options <= set(re.findall(r"--[\w-]+", help_.stdout)), cmd
                else:
                    raise AssertionError(f"unexpected command {cmd}")
    assert seen == {"pip", "doit", "glueforge"}

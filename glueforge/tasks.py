"""doit task dictionaries for a pipeline: one task per stage, model and target.

``dodo.py`` only wires these generators to ``task_*`` functions. Whether a task is up to
date is decided by its action key (content), not by file times.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from doit.exceptions import TaskFailed

from glueforge import GlueforgeError
from glueforge.pipeline import STAGES, Pipeline

log = logging.getLogger("glueforge")


class Plan:
    """The selected target and models of one doit invocation."""

    def __init__(self, pipeline: Pipeline, target: str, models: str | None) -> None:
        self.pipeline = pipeline
        self.target = target
        pipeline.config.target(target)
        self.models = pipeline.config.select_models(models)

    def _name(self, model: str) -> str:
        return f"{self.target}:{model}"

    def fetch_tasks(self) -> Iterator[dict[str, Any]]:
        names = sorted({w for m in self.models for w in self.pipeline.weight_names(m).values()})
        for name in names:
            yield {
                "name": name,
                "doc": f"fetch and verify weight {name}",
                "actions": [(_guarded, (self.pipeline.fetch, name))],
                "uptodate": [_uptodate(self.pipeline.fetched, name)],
                "verbosity": 2,
            }

    def stage_tasks(self, stage: str) -> Iterator[dict[str, Any]]:
        for model in self.models:
            if stage == "export":
                deps = [f"fetch:{w}" for w in self.pipeline.weight_names(model).values()]
            else:
                deps = [f"{STAGES[STAGES.index(stage) - 1]}:{self._name(model)}"]
            yield {
                "name": self._name(model),
                "doc": f"{stage} {model} for target {self.target}",
                "actions": [(_guarded, (self.pipeline.run, stage, model, self.target))],
                "uptodate": [_uptodate(self.pipeline.done, stage, model, self.target)],
                "task_dep": deps,
                "verbosity": 2,
            }

    def build_task(self) -> dict[str, Any]:
        return {
            "doc": "build, validate and bundle the selected models for the target (target=NAME model=NAME[,NAME])",
            "actions": None,
            "task_dep": [f"bundle:{self._name(m)}" for m in self.models],
        }


def _uptodate(check, *args):
    def uptodate(task, values) -> bool:
        try:
            return bool(check(*args))
        except GlueforgeError:
            return False

    return uptodate


def _guarded(function, *args) -> TaskFailed | None:
    """Run a stage; an error a user can act on fails the task with its message, not a traceback."""
    try:
        function(*args)
    except GlueforgeError as e:
        log.error("%s", e)
        return TaskFailed(str(e))
    return None

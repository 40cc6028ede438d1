"""doit task dictionaries for a pipeline: one task per stage, model and target.

``dodo.py`` only wires these generators to ``task_*`` functions. Whether a task is up to
date is decided by its action key (content), not by file times.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from doit.exceptions import TaskFailed

from glueforge import PROJECT_ROOT, GlueforgeError, names, registry
from glueforge.log import configure_logging
from glueforge.pipeline import STAGES, Pipeline
from glueforge.store import parse_location

log = logging.getLogger(__name__)


def _task_of(stage: str) -> str:
    """The doit task that builds the steps of ``stage``."""
    return STAGES[stage].task or stage



def load_plan(target: str, models: str | None, root: Path | None = None, config: str | None = None, **options) -> "Plan":
    """Load models.yaml from ``root`` with its overlays (``config``: comma-separated overlay files, relative to
    the working directory; None: $GLUEFORGE_CONFIG) and select ``target`` and ``models``; exit with the error
    on failure."""
    configure_logging()
    root = Path(root or Path.cwd())
    if not (root / "models.yaml").is_file():
        root = PROJECT_ROOT
    try:
        pipeline = Pipeline.load(root, config)
        plan = Plan(pipeline, target, models, **options)
        pipeline.hold()  # one build at a time per checkout; doit's dep_file lives in the artifacts directory too
        return plan
    except GlueforgeError as e:
        print(f"glueforge: {e}", file=sys.stderr)
        raise SystemExit(2) from None


class Plan:
    """The selected target and models of one doit invocation."""

    def __init__(
        self,
        pipeline: Pipeline,
        target: str,
        models: str | None,
        version: str | None = None,
        store: str | None = None,
        endpoint: str | None = None,
        channels: str = "latest",
        unvalidated: bool = False,
        signing_key: str | None = None,
        dest: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.target = target
        pipeline.config.target(target)
        self.models = pipeline.config.select_models(models)
        pipeline.version_override = names.safe_version(version, "version=") if version else None
        pipeline.unvalidated = unvalidated
        self.channels = [names.safe_name(c.strip(), "channel=") for c in channels.split(",") if c.strip()]
        self._store_args = (store, endpoint)
        # signing_key=PATH, else $GLUEFORGE_SIGNING_KEY, else store.signing_key of models.yaml (relative to the project)
        configured = pipeline.config.project.store.signing_key
        key = signing_key or os.environ.get("GLUEFORGE_SIGNING_KEY") or (str(pipeline.root / configured) if configured else None)
        self.signing_key = Path(key).expanduser() if key else None
        if self.signing_key is not None and not self.signing_key.is_file():
            raise GlueforgeError(f"signing key {self.signing_key}: no such file (glueforge keygen --out DIR writes one)")
        if store is not None:
            parse_location(store)  # refused here, before any task runs
        self.handoff_dest: Path | None = None  # doit handoff dest=DIR
        if dest is not None:
            location = parse_location(dest)
            if not isinstance(location, Path):
                raise GlueforgeError(f"dest={dest}: a hand-off is written to a directory (then carried to the device)")
            self.handoff_dest = location

    def remote_store(self):
        """The store `doit publish` writes to: store=... on the command line, else store.remote of models.yaml."""
        from glueforge.store import open_store

        url, endpoint = self._store_args
        remote = self.pipeline.config.project.store.remote
        if url is None and remote is not None:
            url, endpoint = remote.url, endpoint or remote.endpoint_url
        if url is None:
            raise GlueforgeError("no store to publish to: give store=s3://bucket/prefix (and endpoint=URL) or set store.remote in models.yaml")
        return open_store(url, endpoint)

    def _name(self, model: str) -> str:
        return f"{self.target}:{model}"

    def fetch_tasks(self) -> Iterator[dict[str, Any]]:
        names = sorted({w for m in self.models for w in self.pipeline.weight_names(m).values()})
        for name in names:
            yield {
                "name": name,
                "doc": f"fetch and verify weight {name}",
                "actions": [(_guarded, (self.pipeline.fetch, name))],
                "uptodate": [_uptodate(self._fetched_or_unread, name)],  # doit: every condition must hold
                "verbosity": 2,
            }

    def _fetched_or_unread(self, weight: str) -> bool:
        return self.pipeline.fetched(weight) or self._unread(weight)

    def _unread(self, weight: str) -> bool:
        """No step left to run reads ``weight``: each export and reference step of the selected models that use it
        is cached, here or in the remote cache (a device building from a hand-off has no weights and needs none)."""
        for model in self.models:
            if weight in self.pipeline.weight_names(model).values():
                if not all(self.pipeline.done(task, model, self.target) for task in ("export", "reference")):
                    return False
        return True

    def stage_tasks(self, stage: str) -> Iterator[dict[str, Any]]:
        """One task per selected model: it builds the steps of ``stage`` (and of the stages it builds with, such
        as export's interface) for the target."""
        for model in self.models:
            job = self.pipeline.job(model, self.target)
            steps = self.pipeline.steps(stage)
            needs = {need for step in steps for need in self.pipeline.needs(step, job)}
            tasks = dict.fromkeys(_task_of(need) for need in sorted(needs))
            deps = [f"{task}:{self._name(model)}" for task in tasks if task != stage]
            if stage in ("export", "reference"):  # the steps that read weights
                deps += [f"fetch:{w}" for w in self.pipeline.weight_names(model).values()]
            yield {
                "name": self._name(model),
                "doc": f"{stage} {model} for target {self.target}",
                "actions": [(_guarded, (self.pipeline.run, stage, model, self.target))],
                "uptodate": [_uptodate(self.pipeline.done, stage, model, self.target)],
                "task_dep": deps,
                "verbosity": 2,
            }

    def handoff_tasks(self) -> Iterator[dict[str, Any]]:
        """Per model, its hand-off stages' results into dest=DIR; then the notes of the whole hand-off
        (glueforge/handoff.py)."""
        for model in self.models:
            stages = self.pipeline.handoff_stages(self.pipeline.job(model, self.target))
            if self.handoff_dest is None:  # refused before anything is built
                stages = []
            yield {
                "name": self._name(model),
                "doc": f"hand {model} for target {self.target} off to a device: the results before its engine",
                "actions": [(_guarded, (self._handoff, model))],
                "uptodate": [_uptodate(self._handed_off, model)],
                "task_dep": list(dict.fromkeys(f"{_task_of(stage)}:{self._name(model)}" for stage in stages)),
                "verbosity": 2,
            }
        yield {
            "name": self.target,
            "doc": f"the hand-off's notes for target {self.target}: handoff.json, HANDOFF.md",
            "actions": [(_guarded, (self._handoff_notes,))],
            "task_dep": [f"handoff:{self._name(m)}" for m in self.models],
            "verbosity": 2,
        }

    def _shared(self):
        from glueforge.cache import DirectoryCache

        if self.handoff_dest is None:
            raise GlueforgeError("doit handoff needs dest=DIR: the directory to write the hand-off into")
        return DirectoryCache(self.handoff_dest, create=True)

    def _handoff(self, model: str) -> None:
        self.pipeline.handoff(model, self.target, self._shared())

    def _handed_off(self, model: str) -> bool:
        """Checked without creating dest=DIR (the action does)."""
        from glueforge.cache import DirectoryCache

        return (self.handoff_dest is not None and self.handoff_dest.is_dir()
                and self.pipeline.handed_off(model, self.target, DirectoryCache(self.handoff_dest)))

    def _handoff_notes(self) -> None:
        from glueforge.handoff import Handoff

        shared, pipeline = self._shared(), self.pipeline
        results = {}
        for model in self.models:
            job = pipeline.job(model, self.target)
            results[model] = {"/".join(filter(None, (stage, graph))): pipeline.key(stage, model, self.target, graph)
                              for stage in pipeline.handoff_stages(job) for graph in pipeline.graphs(stage, model, self.target)}
        first_use = any(pipeline.config.project.weights[w].sha256 is None
                        for m in self.models for w in pipeline.weight_names(m).values())
        commit = pipeline.git_commit()
        notes = []
        if commit is None or commit.endswith("-dirty"):
            notes.append("The laptop's checkout had uncommitted changes (or no git): the device computes the same "
                         "action keys only from the same files.")
        runtime = registry.runtime(pipeline.config.target(self.target).runtime)
        device = {k: getattr(runtime, f"DEVICE{suffix}") for k, suffix in (("device", ""), ("setup", "_SETUP"), ("script", "_SCRIPT"))
                  if getattr(runtime, f"DEVICE{suffix}", None) is not None}
        handoff = Handoff(self.target, {m: pipeline.version(m) for m in self.models}, results, commit,
                          pipeline.config.overlays, pipeline.lock_path if first_use else None, notes, **device)
        handoff.write(shared.root)
        log.info("hand-off for %s: %s (HANDOFF.md says what the device runs)", self.target, shared.root)

    def publish_tasks(self) -> Iterator[dict[str, Any]]:
        for model in self.models:
            yield {
                "name": self._name(model),
                "doc": f"publish {model} for target {self.target} to the remote store",
                "actions": [(_guarded, (self._publish, model))],
                "uptodate": [_uptodate(self._published, model)],
                "task_dep": [f"bundle:{self._name(model)}"],
                "verbosity": 2,
            }

    def _publish(self, model: str) -> None:
        self.pipeline.publish(model, self.target, self.remote_store(), self.channels, self.signing_key)

    def _published(self, model: str) -> bool:
        return self.pipeline.published(model, self.target, self.remote_store(), self.channels)

    def build_task(self) -> dict[str, Any]:
        return {
            "doc": "build, validate and bundle models for the target (target=NAME [model=NAME[,NAME] | model=all]; "
                   "no model=: the default set of models.yaml)",
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
    """Run a stage; an error a user can act on fails the task with its message (doit prints it
    once, under the task's name), not a traceback."""
    try:
        function(*args)
    except GlueforgeError as e:
        return TaskFailed(str(e))
    return None

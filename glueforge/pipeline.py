"""The stage graph of one models.yaml: action keys, cached results, and running a stage.

fetch -> export -> simplify -> fuse -> engine -> validate -> bundle

Each stage is an object (``glueforge/stages/``) that owns what it reads, its build and its
code identity; this module only wires them: a stage's action key hashes its code (the import
closure of its modules), the digests of the results it needs and its settings (DESIGN.md,
"Identity and caching"). Consequences: a second build runs nothing, touching a file runs
nothing, and editing one patch reruns only the models whose families use it; a stage whose
inputs come out byte-identical is not rerun either.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from glueforge import PROJECT_ROOT, GlueforgeError, machine
from glueforge.cache import ActionCache, RemoteCache, Result, action_key
from glueforge.config import Config
from glueforge.fetch import describe, fetch, weight_path
from glueforge.files import sha256_file, write_atomic
from glueforge.identity import code_digests
from glueforge.stages import Job, Stage
from glueforge.stages.bundle import Bundle
from glueforge.stages.engine import Engine
from glueforge.stages.export import Export
from glueforge.stages.fuse import Fuse
from glueforge.stages.simplify import Simplify
from glueforge.stages.validate import Validate
from glueforge.store import LocalStore

log = logging.getLogger(__name__)

STAGES: dict[str, Stage] = {s.name: s for s in (Export(), Simplify(), Fuse(), Engine(), Validate(), Bundle())}


class MissingInput(GlueforgeError):
    """A stage's input is not built yet or cannot be built here."""


def remote_cache(config: Config) -> RemoteCache | None:
    """$GLUEFORGE_REMOTE_CACHE (s3://bucket/prefix, endpoint from $GLUEFORGE_S3_ENDPOINT), else cache.remote."""
    url = os.environ.get("GLUEFORGE_REMOTE_CACHE")
    if url:
        return RemoteCache(url, os.environ.get("GLUEFORGE_S3_ENDPOINT"))
    remote = config.project.cache.remote
    return RemoteCache(remote.url, remote.endpoint_url) if remote else None


class Pipeline:
    def __init__(self, config: Config, root: Path = PROJECT_ROOT, artifacts: Path | None = None) -> None:
        self.config = config
        self.root = Path(root)
        self.artifacts = Path(artifacts) if artifacts else self.root / "artifacts"
        self.cache = ActionCache(self.artifacts / "cas", remote_cache(config))
        self.download_cache = Path(os.environ.get("GLUEFORGE_DOWNLOAD_CACHE", self.artifacts / "downloads"))
        self.store = LocalStore(self.root / config.project.store.local)
        self._keys: dict[tuple[str, str, str], str] = {}
        self._verified: dict[tuple[str, str], Result] = {}
        self.version_override: str | None = None  # doit publish version=V
        self.unvalidated = False  # doit publish unvalidated=1: bundle without validation, marked so

    @classmethod
    def load(cls, root: Path = PROJECT_ROOT) -> "Pipeline":
        return cls(Config.load(Path(root) / "models.yaml"), root)

    def job(self, model: str, target: str) -> Job:
        return Job(self.config, model, target)

    def version(self, model: str) -> str:
        return self.version_override or self.config.model(model).version

    # -- fetch ------------------------------------------------------------------------------
    def weight_file(self, name: str) -> Path:
        return weight_path(self.download_cache, self.config.project.weights[name])

    def fetch(self, name: str) -> Path:
        path = fetch(name, self.config.project.weights[name], self.download_cache, self.root)
        self.write_lock()
        return path

    def fetched(self, name: str) -> bool:
        path = self.weight_file(name)
        return path.is_file() and sha256_file(path) == self.config.project.weights[name].sha256

    def weight_names(self, model: str) -> dict[str, str]:
        return Job(self.config, model, "").weight_names()

    def write_lock(self) -> None:
        """models.lock: the digest and size of every declared weight that has been fetched."""
        lines = ["# Written by `doit fetch`: the verified digest of every weight in models.yaml.", "weights:"]
        for name, weight in sorted(self.config.project.weights.items()):
            path = self.weight_file(name)
            size = path.stat().st_size if path.is_file() else None
            lines.append(f"  {name}: {{sha256: {weight.sha256}, size: {size if size is not None else 'null'}}}")
        text = "\n".join(lines) + "\n"
        lock = self.root / "models.lock"
        if not lock.is_file() or lock.read_text() != text:
            write_atomic(lock, text)

    # -- keys -------------------------------------------------------------------------------
    def needs(self, stage: str, job: Job) -> tuple[str, ...]:
        return STAGES[stage].needs(job, self.unvalidated)

    def key(self, stage: str, model: str, target: str) -> str:
        memo = (stage, model, target)
        if memo not in self._keys:
            job, s = self.job(model, target), STAGES[stage]
            self._keys[memo] = action_key(stage, {
                "code": code_digests(s.modules(job)),
                "inputs": {n: self._input(n, model, target).digests() for n in self.needs(stage, job)},
                "settings": s.settings(self, job),
            })
        return self._keys[memo]

    # -- results ----------------------------------------------------------------------------
    def _input(self, stage: str, model: str, target: str) -> Result:
        result = self.cached(stage, model, target)
        if result is None:
            raise MissingInput(f"{stage} of {model} for {target} is not built yet")
        return result

    def cached(self, stage: str, model: str, target: str) -> Result | None:
        """The cached result of ``stage`` (verified once per process), or None."""
        try:
            key = self.key(stage, model, target)
        except MissingInput:
            return None
        if (stage, key) not in self._verified:
            result = self.cache.get(stage, key)
            if result is None:
                return None
            self._verified[(stage, key)] = result
        return self._verified[(stage, key)]

    def result(self, stage: str, model: str, target: str) -> Result:
        """The result of ``stage``, from the cache or built now (with its missing inputs)."""
        cached = self.cached(stage, model, target)
        if cached is not None:
            return cached
        job = self.job(model, target)
        inputs = {n: self.result(n, model, target) for n in self.needs(stage, job)}
        self._keys.pop((stage, model, target), None)
        key = self.key(stage, model, target)
        log.info("%s %s for %s: building (key %s)", stage, model, target, key[:12])
        return self.cache.put(stage, key, lambda out: STAGES[stage].build(self, job, inputs, out))

    def done(self, stage: str, model: str, target: str) -> bool:
        result = self.cached(stage, model, target)
        if result is None:
            return False
        if stage == "bundle":
            return self.store.has(result.meta["manifest"])
        return True

    def run(self, stage: str, model: str, target: str) -> Result:
        result = self.result(stage, model, target)
        if stage == "bundle":
            self.store.publish(result.path)
        return result

    def publish(self, model: str, target: str, store, channels: list[str]) -> None:
        """Publish the bundle of ``model`` for ``target`` (built if needed) to ``store``; move ``channels``."""
        store.publish(self.result("bundle", model, target).path, channels)

    def published(self, model: str, target: str, store, channels: list[str]) -> bool:
        result = self.cached("bundle", model, target)
        if result is None or not store.has(result.meta["manifest"]):
            return False
        return all(store.channel(model, target, c) == self.version(model) for c in channels)

    # -- provenance -------------------------------------------------------------------------
    def tools(self, job: Job) -> dict[str, str]:
        """The tool versions in the action keys of the stages behind the bundle (export to validate);
        ``None`` for a runtime package that is not installed here."""
        tools: dict[str, str] = {}
        pending, seen = list(self.needs("bundle", job)), set()
        while pending:
            stage = pending.pop()
            if stage not in seen:
                seen.add(stage)
                tools.update(STAGES[stage].settings(self, job).get("tools", {}))
                pending.extend(self.needs(stage, job))
        return dict(sorted(tools.items()))

    def provenance(self, job: Job, with_commit: bool) -> dict[str, Any]:
        weights = {}
        for role, name in job.weight_names().items():
            w = self.config.project.weights[name]
            weights[role] = {"name": name, "sha256": w.sha256, "sources": [describe(s) for s in w.sources]}
        prov = {
            "weights": weights,
            "code": code_digests(STAGES["export"].modules(job)),
            "config_digest": self.config.digest(job.spec, job.target_spec),
            "tools": self.tools(job),
            "glueforge": machine.package_version("glueforge"),
        }
        if with_commit:
            prov["git_commit"] = git_commit(self.root)
        return prov


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None

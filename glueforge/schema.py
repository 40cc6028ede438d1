"""The parts of the models.yaml schema that families and runtimes build on.

A family module defines its config as a subclass of :class:`ExtractorSpec` or
:class:`MatcherSpec` with ``family: Literal["<its name>"]``; a runtime module defines its
target as a subclass of :class:`TargetSpec` with ``runtime: Literal["<its name>"]``.
``glueforge.config`` joins them into discriminated unions keyed by ``family`` and
``runtime``. Facts that other code reads (channels, size divisor, descriptor size, match
output, precisions, keypoint limit) are class attributes or properties of these specs, so
core code asks the spec and never names a family or a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from glueforge.depth import ExitRule, Policy


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


PADDING = -1.0  # the keypoint coordinates of a padded slot (see ExtractorSpec)


class ExtractorSpec(Strict):
    """A keypoint extractor: ``images (N, C, H, W) -> keypoints (N, K, 2), scores (N, K), descriptors (N, K, D)``,
    then one (N, K) output per name in ``keypoint_features`` (for example SIFT's scales and orientations).

    K is fixed. An image with fewer than K keypoints fills the remaining slots with padding:
    keypoint ``(-1, -1)`` (``PADDING``), score 0, an all-zero descriptor and 0 for every keypoint
    feature. A slot whose x coordinate is negative is padding, and no matcher matches it.

    ``host`` extractors (SIFT) run on the host, not in a graph: the family module's
    ``extract(spec, images, keypoints)`` returns the padded numpy arrays above, and the model's
    graphs are the matcher's only. ``extractor_outputs`` is what the ``extractor`` graph returns;
    a family whose graph returns something else (SuperPoint's dense maps) overrides it and
    provides ``decode(spec, outputs, keypoints)`` that turns those outputs into the arrays above.
    """

    role: ClassVar[str] = "extractor"
    channels: ClassVar[int] = 3  # C of the ``images`` input
    colour: ClassVar[str] = "RGB"  # "RGB" or "L" (grey)
    divisor: ClassVar[int] = 8  # H and W must be multiples of it
    keypoint_features: ClassVar[tuple[str, ...]] = ()  # extra per-keypoint outputs, in this order
    host: ClassVar[bool] = False  # runs on the host (family module ``extract``), no extractor graph
    host_extractor: ClassVar[str] = ""  # for ``host``: what the caller runs, for the manifest's preprocessing
    family: str
    weights: Optional[str] = None  # required unless the family has no learned weights (``host``)

    @property
    def descriptor_dim(self) -> int:
        raise NotImplementedError

    @property
    def dense(self) -> bool:
        """The extractor graph returns maps that the family's ``decode`` turns into keypoints on the host."""
        return False

    def extractor_outputs(self, keypoints: int) -> list[tuple[str, str, tuple[int | str, ...]]]:
        """(name, dtype, shape) of each output of the ``extractor`` graph; "N", "H" and "W" are dynamic."""
        return [("keypoints", "float32", ("N", keypoints, 2)), ("scores", "float32", ("N", keypoints)),
                ("descriptors", "float32", ("N", keypoints, self.descriptor_dim)),
                *((f, "float32", ("N", keypoints)) for f in self.keypoint_features)]


class MatcherSpec(Strict):
    """A matcher: keypoints and descriptors of two images -> ``matches0 (B, K)``, ``mscores0 (B, K)``."""

    role: ClassVar[str] = "matcher"
    family: str
    weights: str

    @property
    def input_dim(self) -> int:
        """The descriptor size it takes."""
        raise NotImplementedError

    @property
    def keypoint_inputs(self) -> tuple[str, ...]:
        """Per-keypoint features it takes besides keypoints and descriptors, each (2B, K), in this
        order (LightGlue with ``add_scale_ori``: scales and orientations); the extractor must give them."""
        return ()

    @property
    def state_dim(self) -> int:
        """The size of each point's state between layers (the step graphs' ``states``)."""
        raise NotImplementedError

    @property
    def layers(self) -> Optional[int]:
        """The layers the ``matcher`` graph runs (None: a matcher that is not layered)."""
        return None

    def at_fixed_depth(self) -> "MatcherSpec":
        """This matcher without its exit rule (what its fixed-depth graphs read)."""
        return self

    def depth_policy(self) -> dict[str, Any]:
        """What the manifest says of the matcher's depth: fixed, with its layers, or adaptive, with its exit rule."""
        rule = self.exit_rule
        if rule is not None:
            return rule.as_dict()
        return {"policy": Policy.FIXED.value, **({"layers": self.layers} if self.layers else {})}

    @property
    def exit_rule(self) -> Optional[ExitRule]:
        """Adaptive depth: the rule that stops the layer-by-layer run (``glueforge.depth``); None: fixed depth, the
        ``matcher`` graph alone."""
        return None


def missing_keypoint_inputs(extractor: ExtractorSpec, matcher: MatcherSpec) -> list[str]:
    """The per-keypoint features ``matcher`` takes that ``extractor`` does not give."""
    return [name for name in matcher.keypoint_inputs if name not in extractor.keypoint_features]


class Tolerance(Strict):
    atol: Annotated[float, Field(ge=0)]
    rtol: Annotated[float, Field(ge=0)] = 0.0
    stat: Literal["max", "mean", "median", "elemwise"] = "median"


class Thresholds(Strict):
    keypoint_mnn: Annotated[float, Field(ge=0, le=1)]
    descriptor_cosine: Annotated[float, Field(ge=-1, le=1)]
    match_recall: Annotated[float, Field(ge=0, le=1)]
    # the homography gate: the engine's AUC@3px may fall at most this far below the reference's (validation/validate.py)
    homography_auc_margin: Annotated[float, Field(ge=0, le=1)] = 0.02


class BatchProfile(Strict):
    """Pairs per call (the 2B input has 2 * pairs images): min/opt/max of a shape profile."""

    min: Annotated[int, Field(ge=1)] = 1
    opt: Annotated[int, Field(ge=1)] = 1
    max: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _order(self) -> "BatchProfile":
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"needs min <= opt <= max (got {self.min}, {self.opt}, {self.max})")
        return self


class BenchmarkSettings(Strict):
    """The benchmark a build records in the manifest, where the target's runtime runs on the build machine
    (``glueforge bench`` takes the same settings on the command line)."""

    graphs: Optional[list[Literal["end2end", "extractor", "matcher"]]] = None  # None: every graph of the model
    batch: Annotated[list[Annotated[int, Field(ge=1, le=64)]], Field(min_length=1)] = [1]
    warmup: Annotated[int, Field(ge=0)] = 1
    seconds: Annotated[float, Field(gt=0)] = 2.0  # per graph and batch: until stable or this long
    runs: Optional[Annotated[int, Field(ge=1)]] = None  # exactly this many runs instead
    frame: bool = False  # also one frame at engine level: the extractor on 1 image, the matcher on 1 pair (bench --frame)


# fp32 and fp16: the whole graph; int8: the extractor's convolutions in INT8 (QDQ, glueforge/quantize.py), the rest at
# the runtime's float precision; fp8: refused (no runtime module builds it yet; TensorRT refuses it below 8.9)
Precision = Literal["fp32", "fp16", "int8", "fp8"]


class Calibration(Strict):
    """The images an ``int8`` target's extractor is calibrated on (``glueforge/quantize.py``)."""

    # a directory of the user's photographs (relative to the project, or absolute); None: the default set, scikit-image's
    # photographs and textures that no validation or homography check reads
    images: Optional[str] = None
    count: Annotated[int, Field(ge=1, le=1000)] = 12  # at most this many, the first by file name
    method: Literal["minmax", "entropy", "percentile"] = "minmax"  # onnxruntime.quantization's calibrators


@dataclass(frozen=True)
class Recipe:
    """How a runtime module wants INT8 convolutions (its ``QUANTIZATION``; ``glueforge/quantize.py`` applies it).
    Weights are always INT8, symmetric, per output channel."""

    activations: Literal["int8", "uint8"]
    symmetric_activations: bool
    # each convolution's output too (a runtime whose integer convolution kernels take and give integers needs it); the
    # head convolutions, from which no other convolution is reached, then stay float: their outputs are the features
    outputs: bool = False

    def describe(self) -> str:
        kind = "symmetric" if self.symmetric_activations else "asymmetric"
        outputs = "; convolution outputs quantized, head convolutions float" if self.outputs else ""
        return f"QDQ: {kind} {self.activations} activations per tensor, symmetric int8 weights per output channel{outputs}"


# what TensorRT's explicit quantization reads (symmetric, zero point 0, Q/DQ on each convolution's inputs), and OpenVINO
# runs
SYMMETRIC_INT8 = Recipe("int8", True)


class TargetSpec(Strict):
    """A deployment target of one runtime."""

    precisions: ClassVar[tuple[str, ...]] = ("fp32",)  # what the runtime module can build
    match_output: ClassVar[str] = "list"  # "list": matches (M, 3); "dense": matches0 (B, K), no data-dependent shape
    max_keypoints: ClassVar[Optional[int]] = None  # a limit of the runtime's TopK, checked at load time
    runtime: str
    precision: Precision
    calibration: Calibration = Calibration()  # read only where precision is int8
    description: Optional[str] = None
    keypoints: Optional[Annotated[int, Field(ge=16, le=16384)]] = None
    tolerances: dict[str, Tolerance]
    thresholds: Thresholds
    benchmark: BenchmarkSettings = BenchmarkSettings()

    @model_validator(mode="after")
    def _precision(self) -> "TargetSpec":
        if self.precision not in self.precisions:
            raise ValueError(f"runtime {self.runtime!r} builds precision {' or '.join(self.precisions)}, "
                             f"not {self.precision!r}")
        return self

    # what the runtime module's ``prepare`` and ``check`` read of the target (the fuse step's view; an int8 target's also
    # holds ``calibration``)
    fuse_fields: ClassVar[tuple[str, ...]] = ("runtime", "precision")

    @property
    def static_image_size(self) -> Optional[tuple[int, int]]:
        """The one (H, W) a target's graphs are fixed at (a runtime whose graphs are static), else None: any size its
        shape profile takes. Validation runs that size only; models.yaml's other validated sizes are not run."""
        return None

    @property
    def quantized(self) -> bool:
        """The extractor is calibrated and quantized to INT8 (``glueforge/quantize.py``)."""
        return self.precision == "int8"

    def view(self, stage: str) -> "TargetSpec":
        """This target as the ``stage`` step reads it (``glueforge.views.restricted``): reading a field outside the
        view raises, and the step's key covers the view whole."""
        from glueforge.views import restricted

        everything = set(type(self).model_fields)
        fields = {
            "fuse": set(self.fuse_fields) | ({"calibration"} if self.quantized else set()),
            "engine": everything - {"tolerances", "thresholds", "description", "benchmark", "calibration"},
            "validate": everything - {"description", "benchmark", "calibration"},
            "benchmark": everything - {"description", "tolerances", "thresholds", "calibration"},
            "bundle": everything - ({"description"} if self.quantized else {"description", "calibration"}),
        }[stage]
        return restricted(self, fields)

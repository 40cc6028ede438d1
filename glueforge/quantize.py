"""INT8 extractors: static post-training quantization of the convolutions, in QDQ form.

An ``int8`` target (``TargetSpec.quantized``) quantizes every graph that takes images (the
extractor and end2end) before its runtime prepares it (the fuse step). The matcher's arithmetic
stays at the target's float precision: only ``Conv`` nodes are quantized, and the matchers
(LightGlue, LighterGlue) have none.

- **Format**: QuantizeLinear/DequantizeLinear pairs (QDQ) on each convolution's input and
  weights, written by ``onnxruntime.quantization.quantize_static``. Weights are INT8, symmetric,
  per output channel; biases stay float (TensorRT quantizes no bias).
- **Activations** follow the runtime module's :class:`Recipe` (its ``QUANTIZATION``): symmetric
  INT8, the form TensorRT's explicit quantization reads and OpenVINO runs; or, for onnxruntime's
  CPU provider, asymmetric UINT8 with the convolutions' outputs quantized too (its U8S8 integer
  convolutions, onnxruntime's quantization guide), the head convolutions left float.
- **Calibration** (:class:`CalibrationSet`): the target's ``calibration.images`` directory, or the
  default set: twelve of scikit-image's photographs and textures (camera, brick, grass, gravel,
  coins, moon, page, clock_motion, hubble_deep_field, ihc, retina, text), none of which a
  validation or homography check reads. The calibrator records each convolution input's range
  over the set at the graph's optimum size: MinMax ranges settle within the first images (a
  convolution's range is set by the strongest responses, which edges, text and texture give), and
  the note of issue 19 has the trade-off measured against the set's size. The set's files are
  part of the fuse step's key by name and sha256, and are verified before they are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from glueforge import GlueforgeError
from glueforge.files import sha256_file
from glueforge.schema import Calibration, Recipe

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# scikit-image's own photographs and textures, in its package: none of them is a validation pair (stereo_motorcycle) or
# a homography warp (astronaut, coffee, chelsea, rocket, motorcycle)
DEFAULT_IMAGES = ("camera.png", "brick.png", "grass.png", "gravel.png", "coins.png", "moon.png", "page.png",
                  "clock_motion.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "text.png")
DEFAULT_SOURCE = "scikit-image data"


class CalibrationError(GlueforgeError):
    """The calibration images cannot be read, or are not the ones the step's key holds."""


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration images as a step's key holds them: where they come from, and each file's name and sha256."""

    source: str  # DEFAULT_SOURCE, or the configured directory as written
    files: tuple[tuple[str, str], ...]  # (name, sha256), sorted by name

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(f"{n} {d}" for n, d in self.files).encode()).hexdigest()


def tool_versions() -> dict[str, str]:
    """The versions that shape a quantized graph: the calibrator and quantizer's package, and Pillow's, which reads and
    resizes the calibration images."""
    import importlib

    import PIL
    from onnxruntime import quantization

    package = importlib.import_module(quantization.__name__.partition(".")[0])
    return {quantization.__name__: package.__version__, "pillow": PIL.__version__}


def _default_directory() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def _directory(source: str, root: Path) -> Path:
    if source == DEFAULT_SOURCE:
        return _default_directory()
    path = Path(source).expanduser()
    return path if path.is_absolute() else root / path


def calibration_set(spec: Calibration, root: Path) -> CalibrationSet:
    """The files of the target's calibration (``spec``): its directory's images, the first ``count`` by name, or the
    default set. A directory that is missing or holds no image raises :class:`CalibrationError` naming it."""
    if spec.images is None:
        directory, names = _default_directory(), list(DEFAULT_IMAGES[: spec.count])
        source = DEFAULT_SOURCE
    else:
        source, directory = spec.images, _directory(spec.images, root)
        if not directory.is_dir():
            raise CalibrationError(f"calibration.images: {spec.images!r} is not a directory ({directory})")
        names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise CalibrationError(f"calibration.images: {spec.images!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        names = names[: spec.count]
    return CalibrationSet(source, tuple((n, sha256_file(directory / n)) for n in sorted(names)))


def load_images(calibration: CalibrationSet, root: Path, size_hw: Sequence[int], colour: str) -> list[np.ndarray]:
    """The set's images as the graphs take them (``glueforge.validation.images.prepare``): float32 (C, H, W) each,
    after checking each file's sha256 against the set's."""
    from glueforge.validation.images import load

    directory = _directory(calibration.source, root)
    images = []
    for name, digest in calibration.files:
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            raise CalibrationError(f"calibration image {path} changed or vanished since the build was planned "
                                   "(its sha256 is part of the step's key): run the build again")
        images.append(load(path, size_hw, colour))
    return images


def feeds(inputs: Sequence[Mapping[str, Any]], images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed per calibration call of a graph whose only input is ``images``: an image each for the extractor
    (``N``), consecutive pairs for end2end (``2B``, the last image paired with the first when the count is odd)."""
    (spec,) = inputs
    if spec["shape"][0] == "2B":
        count = len(images) + len(images) % 2
        paired = [images[i % len(images)] for i in range(count)]
        return [{spec["name"]: np.stack(paired[i:i + 2])} for i in range(0, count, 2)]
    return [{spec["name"]: image[None]} for image in images]


def takes_images(inputs: Sequence[Mapping[str, Any]]) -> bool:
    """A graph the extractor is part of: its one input is the images."""
    return len(inputs) == 1 and inputs[0]["name"] == "images"


def quantize(model, calibration_feeds: Sequence[Mapping[str, np.ndarray]], recipe: Recipe, method: str):
    """``model`` (an ``onnx.ModelProto``) with its convolutions in INT8 QDQ form, calibrated on ``calibration_feeds``
    -> (the quantized model, its record for the manifest)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(calibration_feeds)

        def get_next(self):
            return next(self._feeds, None)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    activation = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[recipe.activations]
    float_heads = head_convolutions(model) if recipe.outputs else []
    with tempfile.TemporaryDirectory(prefix="glueforge-quantize-") as tmp, _quiet_quantizer():
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(source))
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        per_channel=True, activation_type=activation, weight_type=QuantType.QInt8,
                        nodes_to_exclude=float_heads,
                        calibrate_method=methods[method],
                        extra_options={"ActivationSymmetric": recipe.symmetric_activations, "WeightSymmetric": True,
                                       "QuantizeBias": False,
                                       "OpTypesToExcludeOutputQuantization": [] if recipe.outputs else ["Conv"],
                                       "CalibTensorRangeSymmetric": recipe.symmetric_activations},
                        calibration_providers=["CPUExecutionProvider"])
        quantized = onnx.load(str(target))
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    integer = sum(n.op_type == "Conv" and n.input[1] in dequantized for n in quantized.graph.node)
    if convs and not integer:
        raise GlueforgeError(f"quantization left all {convs} convolutions in float (float heads: {float_heads})")
    return quantized, {"recipe": recipe.describe(), "method": method, "calibration_calls": len(calibration_feeds),
                       "convolutions": convs, "quantized_convolutions": integer, "float_convolutions": float_heads}


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantizer (onnxruntime.quantization) advises its own pre-processing on the root logger at WARNING, twice
    per graph (our graphs are simplified and shape-inferred already): those lines go to DEBUG, the rest passes."""
    class Advice(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if "pre-process" in record.getMessage():
                log.debug("onnxruntime.quantization: %s", record.getMessage().strip())
                return False
            return True

    advice = Advice()
    root = logging.getLogger()
    handlers = [root, *root.handlers]
    for h in handlers:
        h.addFilter(advice)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(advice)


def head_convolutions(model) -> list[str]:
    """The names of the convolutions from which no other convolution is reached: the heads whose outputs are the
    features (keypoint scores, descriptors), in graph order."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    heads = []
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        seen, todo, reaches = set(), list(conv.output), False
        while todo and not reaches:
            for node in consumers.get(todo.pop(), []):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                reaches = node.op_type == "Conv"
                todo.extend(node.output)
        if not reaches:
            heads.append(conv.name)
    return heads

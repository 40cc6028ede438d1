"""interface: the model's ``io.json``, built with the export (no torch): every graph's inputs and outputs
(from its export step), the preprocessing a caller applies, the image sizes and the keypoint count.

Every later stage reads the graphs' shapes from here, not from the export steps, so a stage keys on
the interface it builds against. Code identity: this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from glueforge.schema import ExtractorSpec
from glueforge.stages import Job, Label, Services, Stage


@dataclass(frozen=True)
class InterfaceView:
    graphs: tuple[str, ...]
    extractor: ExtractorSpec  # its colour, channels, divisor and host extractor: the preprocessing
    sizes: dict[str, list[int]]  # min/opt/max [H, W]
    keypoints: int


class Interface(Stage):
    name = "interface"
    task = "export"  # built by the export task, right after the graphs

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("export",)

    def view(self, services: Services, job: Job, graph: str | None) -> InterfaceView:
        s = job.settings
        return InterfaceView(tuple(s.graphs), s.extractor, s.sizes, s.keypoints)

    def build(self, services: Services, view: InterfaceView, inputs: Mapping[str, Any], out: Path, label: Label) -> dict[str, Any]:
        x = view.extractor
        io = {g: json.loads(inputs["export"][g].file("io.json").read_text()) for g in view.graphs}
        spec = {"graphs": io,
                "preprocessing": preprocessing(x.colour, x.channels, x.divisor, view.sizes, x.host_extractor if x.host else ""),
                "image_sizes": {**view.sizes, "divisor": x.divisor}, "keypoints": view.keypoints}
        (out / "io.json").write_text(json.dumps(spec, indent=1))
        return {"graphs": list(view.graphs)}


def preprocessing(colour: str, channels: int, divisor: int = 1, sizes: dict[str, list[int]] | None = None,
                  host_extractor: str = "") -> dict[str, Any]:
    """What a caller does to an image before the graph, for the manifest.

    H and W are dynamic, in multiples of ``divisor``, within ``sizes`` min/max where the engine
    has a shape profile. An arbitrary image is padded (preferred: keypoints need no mapping) or
    resized to a valid size. With a ``host_extractor`` (what runs on the host instead of an
    extractor graph) there is no image graph: any size is valid, and the matcher takes each
    image's (width, height) in ``image_sizes``.
    """
    described = {"RGB": "RGB (grey repeated to 3 channels)", "L": "grey (luminance, 1 channel)"}[colour]
    if host_extractor:
        return {
            "colour": described,
            "extractor": f"on the host: {host_extractor}",
            "size": "any H and W; no image enters a graph",
            "image_sizes": "the matcher's image_sizes input: each image's (width, height) in pixels, float32",
            "scale": "pixel / 255, range [0, 1] (the extractor takes image * 255 as uint8: the pixels exactly)",
            "padding_slots": "fewer than K keypoints: the remaining slots hold keypoint (-1, -1), score 0, a zero "
                             "descriptor and 0 for every keypoint feature; they never match",
        }
    return {
        "colour": described,
        "channels": str(channels),
        "size": (f"H and W multiples of {divisor}" + (f", from {sizes['min']} to {sizes['max']} ([H, W]; the engine's "
                                                         f"shape profile, optimum {sizes['opt']})" if sizes else "")),
        "divisor": divisor,
        "pad": (f"zero-pad the right and bottom edges up to the next multiples of {divisor} (e.g. KITTI 376x1241 -> "
                f"{-(-376 // divisor) * divisor}x{-(-1241 // divisor) * divisor}); keypoints are in the original "
                "image's pixels as they are; drop keypoints that fall in the padding (x >= W or y >= H)"),
        "resize": ("or: bilinear resize to a valid H' x W'; map keypoints back with x * W / W', y * H / H' "
                   "(pixel-centre convention: (x + 0.5) * W / W' - 0.5 if sub-pixel accuracy matters)"),
        "dtype": "float32",
        "scale": "pixel / 255, range [0, 1]",
        "normalisation": "none",
        "layout": "NCHW, pairs interleaved (2b, 2b + 1)",
        "padding_slots": "fewer than K keypoints: the remaining slots hold keypoint (-1, -1), score 0, a zero "
                         "descriptor; they never match",
    }

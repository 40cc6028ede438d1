"""The runtime API: run a bundle on numpy images of any size, without torch.

    import glueforge

    with glueforge.open("bundles/aliked_lightglue/0.2.0/cpu") as bundle:
        features = bundle.extract([image0, image1])        # list[Features], in the caller's pixels
        found = bundle.match(features[0], features[1])     # Matches: (S, 2) indices, (S,) scores
        pair = bundle.match_pair(image0, image1)           # Pair: both images' features and matches

Images are numpy arrays, ``(H, W)`` grey or ``(H, W, 3)`` RGB (``(H, W, 4)``: the alpha is
dropped), ``uint8`` in [0, 255] or floating point in [0, 1], of any size. The API applies the
manifest's preprocessing (``preprocess``): the family's colour, a bilinear resize only where
the engine's shape profile cannot take the image, zero padding of the right and bottom edges
to the family's size divisor, ``pixel / 255``. Keypoints come back in the caller's pixels,
padded slots and keypoints in the padding dropped; matches index those keypoints.

Needs numpy, Pillow and the bundle's runtime package (onnxruntime, openvino, TensorRT with
cuda-python, TensorRT-RTX with cuda-python): never torch. The runtime is reached through its
module's ``open_graph`` (``glueforge.runtime``), host code (SIFT, SuperPoint's dense decoding)
through its family module's ``extract`` and ``decode``; this module names neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from glueforge import registry
from glueforge.depth import NEXT_STATES, ExitRule, Policy, exit_graph, layer_graph, step_graphs
from glueforge.runtime import GraphRunner
from glueforge.verify import BundleError, verify_bundle  # BundleError: a bundle that cannot open, or a call it cannot serve

MANIFEST = "manifest.json"


# -- results -------------------------------------------------------------------------------------
@dataclass
class Features:
    """One image's local features, in the caller's pixel coordinates.

    ``keypoints`` (n, 2) float32 (x, y); ``scores`` (n,) and ``descriptors`` (n, D) float32, or
    None where the graph does not return them (``end2end`` returns keypoints only);
    ``image_size`` the caller's (width, height); ``extra`` the family's per-keypoint features
    (n,) each, such as SIFT's ``scales`` and ``oris``.
    """

    keypoints: np.ndarray
    scores: np.ndarray | None
    descriptors: np.ndarray | None
    image_size: tuple[int, int]
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keypoints)


@dataclass
class Matches:
    """``matches`` (S, 2) int64: index in features0, index in features1; ``scores`` (S,) float32; ``layers`` the matcher
    layers that ran (fewer than all where adaptive depth stopped early; None where the manifest does not say)."""

    matches: np.ndarray
    scores: np.ndarray
    layers: int | None = None

    def __len__(self) -> int:
        return len(self.matches)


@dataclass
class Pair:
    """Both images' features and their matches (indices into ``features0`` and ``features1``)."""

    features0: Features
    features1: Features
    matches: np.ndarray
    scores: np.ndarray
    layers: int | None = None  # as Matches.layers

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """The matched keypoints, (S, 2) each, in the caller's pixels."""
        return self.features0.keypoints[self.matches[:, 0]], self.features1.keypoints[self.matches[:, 1]]


# -- the graphs' match outputs -----------------------------------------------------------------------
def pair_matches(outputs: Mapping[str, np.ndarray], pair: int) -> tuple[np.ndarray, np.ndarray]:
    """Matches (S, 2) int64 and scores (S,) of one pair, from either form the graphs return.

    ``matches`` (M, 3) rows (pair, index in image 0, index in image 1) with ``mscores`` (M,); or
    the dense ``matches0`` (B, K): the index in image 1 of each keypoint of image 0, -1 for none,
    with ``mscores0`` (B, K).
    """
    if "matches0" in outputs:
        row = np.asarray(outputs["matches0"])[pair]
        index0 = np.nonzero(row > -1)[0]
        scores = np.asarray(outputs["mscores0"])[pair][index0] if "mscores0" in outputs else np.ones(len(index0), np.float32)
        return np.stack([index0, row[index0]], axis=1).astype(np.int64), scores.astype(np.float32)
    matches = np.asarray(outputs["matches"])
    chosen = matches[:, 0] == pair
    scores = np.asarray(outputs["mscores"])[chosen] if "mscores" in outputs else np.ones(int(chosen.sum()), np.float32)
    return matches[chosen][:, 1:].astype(np.int64), scores.astype(np.float32)


# -- adaptive depth --------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """The match outputs of the exit graph the exit rule chose, and how many layers ran."""

    outputs: dict[str, np.ndarray]
    layers: int


def run_layers(rule: ExitRule, infer: Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
               feed: Mapping[str, np.ndarray]) -> Outcome:
    """Adaptive depth (``glueforge.depth``): the step graphs on the ``matcher`` graph's ``feed`` (``keypoints``,
    ``descriptors``, ``image_sizes`` and the keypoint inputs), layer by layer until the rule stops or the last has run,
    then that layer's exit. ``infer(graph, inputs)`` runs one graph."""
    real = np.asarray(feed["keypoints"])[..., 0] >= 0  # padded slots are x < 0 (glueforge.schema.PADDING)
    common = {name: value for name, value in feed.items() if name != "descriptors"}
    states = None
    for layer in range(rule.layers):
        inputs = {**common, "descriptors": feed["descriptors"]} if layer == 0 else {**common, "states": states}
        out = infer(layer_graph(layer), inputs)
        states = out[NEXT_STATES]
        if layer < rule.layers - 1:
            if "confidences" not in out:
                raise BundleError(f"{layer_graph(layer)} returned no confidences: the bundle's step graphs do not "
                                  f"match its exit rule ({rule.layers} layers)")
            if rule.stops(out["confidences"], real, layer):
                break
    return Outcome(dict(infer(exit_graph(layer), {"keypoints": feed["keypoints"], "states": states})), layer + 1)


# -- images --------------------------------------------------------------------------------------------
def as_image(image: Any, where: str = "image") -> np.ndarray:
    """Check one caller image: (H, W) or (H, W, 1/3/4), uint8 or float in [0, 1]. Returns it as an array."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise BundleError(f"{where}: expected (H, W) grey or (H, W, 3) RGB, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise BundleError(f"{where}: empty image, shape {array.shape}")
    if array.dtype == np.uint8:
        return array[..., :3] if array.ndim == 3 else array
    if not np.issubdtype(array.dtype, np.floating):
        raise BundleError(f"{where}: expected uint8 in [0, 255] or float in [0, 1], got dtype {array.dtype}")
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise BundleError(f"{where}: float images must be finite and in [0, 1], got [{np.nanmin(array)}, {np.nanmax(array)}]")
    array = array.astype(np.float32, copy=False)
    return array[..., :3] if array.ndim == 3 else array


def to_colour(image: np.ndarray, colour: str) -> np.ndarray:
    """An image from :func:`as_image` in the family's colour: "RGB" (H, W, 3) or "L" (H, W).

    uint8 RGB becomes grey as Pillow's ``convert("L")`` does (ITU-R 601-2 luma), which is what
    validation did; float RGB with the same weights.
    """
    grey = image.ndim == 2
    if colour == "RGB":
        return np.repeat(image[..., None], 3, axis=2) if grey else image
    if grey:
        return image
    if image.dtype == np.uint8:
        from PIL import Image

        return np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("L"))
    return (image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with Pillow (validation's filter): uint8 as is, float per channel."""
    from PIL import Image

    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    channels = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[2])]
    out = [np.asarray(Image.fromarray(c, mode="F").resize((width, height), Image.BILINEAR)) for c in channels]
    return out[0] if image.ndim == 2 else np.stack(out, axis=2)


@dataclass(frozen=True)
class Fit:
    """How one caller image becomes a graph input: ``content`` (h, w) after a resize (if any),
    zero-padded to ``graph`` (H, W)."""

    size: tuple[int, int]  # the caller's (h, w)
    content: tuple[int, int]
    graph: tuple[int, int]

    @property
    def resized(self) -> bool:
        return self.content != self.size

    def inside(self, keypoints: np.ndarray) -> np.ndarray:
        """Real keypoints on the image's content: not padded slots, not in the zero padding."""
        x, y = keypoints[:, 0], keypoints[:, 1]
        return (x >= 0) & (y >= 0) & (x < self.content[1]) & (y < self.content[0])

    def to_caller(self, keypoints: np.ndarray) -> np.ndarray:
        """Graph pixels -> the caller's pixels (pixel-centre convention where resized)."""
        if not self.resized:
            return keypoints.astype(np.float32, copy=True)
        scale = np.array([self.size[1] / self.content[1], self.size[0] / self.content[0]], dtype=np.float32)
        return ((keypoints + 0.5) * scale - 0.5).astype(np.float32)


def fit(size: tuple[int, int], divisor: int, smallest: Sequence[int] | None = None,
        largest: Sequence[int] | None = None, max_size: int | None = None) -> Fit:
    """The graph size of a (h, w) image: padded up to multiples of ``divisor`` and at least
    ``smallest``; resized down first, keeping its aspect ratio, only where it exceeds ``largest``
    (an engine's shape profile) or where its longest side exceeds ``max_size`` (rounded down to a
    multiple of ``divisor``). ``smallest``/``largest`` are [H, W] or None (no limit); ``max_size``
    an int or None (no limit)."""
    h, w = int(size[0]), int(size[1])
    up = lambda n: -(-int(n) // divisor) * divisor  # noqa: E731
    tops = []
    if largest is not None:
        tops.append((int(largest[0]) // divisor * divisor, int(largest[1]) // divisor * divisor))
    if max_size:
        side = max(divisor, int(max_size) // divisor * divisor)
        tops.append((side, side))
    ch, cw = h, w
    for top in tops:
        if up(ch) > top[0] or up(cw) > top[1]:
            scale = min(top[0] / ch, top[1] / cw)
            ch, cw = max(1, min(top[0], int(round(ch * scale)))), max(1, min(top[1], int(round(cw * scale))))
    gh, gw = up(ch), up(cw)
    if smallest is not None:
        gh, gw = max(gh, up(smallest[0])), max(gw, up(smallest[1]))
    return Fit((h, w), (ch, cw), (gh, gw))


def preprocess(image: np.ndarray, colour: str, placement: Fit) -> np.ndarray:
    """One checked image -> float32 (C, H, W) in [0, 1], as the manifest's preprocessing says."""
    image = to_colour(image, colour)
    if placement.resized:
        image = _resize(image, *placement.content)
    values = image.astype(np.float32) / np.float32(255.0) if image.dtype == np.uint8 else image.astype(np.float32)
    chw = values[None] if values.ndim == 2 else values.transpose(2, 0, 1)
    out = np.zeros((chw.shape[0], *placement.graph), dtype=np.float32)
    out[:, :chw.shape[1], :chw.shape[2]] = chw
    return out


# -- the bundle ----------------------------------------------------------------------------------------
def run_spec(io: Mapping[str, Any], runtime: Mapping[str, Any], extractor: Any, matcher: Any,
             **identity: Any) -> dict[str, Any]:
    """The manifest fields this API runs a bundle from (``glueforge.stages.bundle`` writes them):
    graphs and their I/O, preprocessing, image sizes, K, the runtime block, and the extractor's and
    matcher's family configuration (host code such as SIFT and SuperPoint's decoding needs it);
    ``identity`` (model, version, target) first. Stages that run an engine before it is bundled
    open it with these."""
    def family(spec: Any, role: str) -> dict[str, Any] | None:
        if spec is None:
            return None
        facts = ({"colour": spec.colour, "channels": spec.channels, "divisor": spec.divisor, "host": spec.host,
                  "dense": spec.dense, "descriptor_dim": spec.descriptor_dim, "keypoint_features": list(spec.keypoint_features)}
                 if role == "extractor" else {"keypoint_inputs": list(spec.keypoint_inputs), "depth": spec.depth_policy()})
        return {"family": spec.family, **facts, "config": spec.model_dump(mode="json")}

    return {
        **identity,
        "runtime": dict(runtime),
        "graphs": {name: {"file": runtime["files"][name], **spec} for name, spec in io["graphs"].items()},
        "preprocessing": io["preprocessing"],
        "image_sizes": io["image_sizes"],
        "keypoints": io["keypoints"],
        "extractor": family(extractor, "extractor"),
        "matcher": family(matcher, "matcher"),
    }


GREY_MODES = ("1", "L", "LA", "La")  # Pillow's modes of grey images (with alpha: the alpha is dropped)
COLOUR_MODES = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grey (PNG, TIFF), as integers up to 65535


def load_image(path: str | Path) -> np.ndarray:
    """An image file as the API takes it, turned upright by its EXIF orientation: (H, W) for grey files, (H, W, 3)
    RGB otherwise; uint8 for 8-bit files, float32 in [0, 1] for 16-bit grey (no precision lost, nothing saturated).
    Palette, CMYK and alpha images are converted; any other kind is refused, naming the mode."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)
            return _pixels(upright, path)
    except FileNotFoundError:
        raise BundleError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise BundleError(f"{path}: a directory, not an image file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise BundleError(f"{path}: not an image Pillow can read ({e})") from None


def _pixels(image: Any, path: str | Path) -> np.ndarray:
    mode = image.mode
    if mode in DEEP_MODES:
        values = np.asarray(image).astype(np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise BundleError(f"{path}: {mode} pixel values outside 0..65535; convert it to an 8- or 16-bit image")
        return (values / 65535.0).astype(np.float32)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all() or (values.size and (values.min() < 0 or values.max() > 1)):
            raise BundleError(f"{path}: a floating-point image must hold values in [0, 1]")
        return values
    if mode in GREY_MODES:
        return np.asarray(image.convert("L"))
    if mode in COLOUR_MODES:
        return np.asarray(image.convert("RGB"))
    raise BundleError(f"{path}: unsupported image mode {mode!r}; give an 8- or 16-bit grey, RGB, palette or CMYK image")


def open(path: str | Path, trusted_keys: Sequence[str | Path] | None = None,  # noqa: A001 - as DESIGN.md names it
         max_size: int | None = None) -> "Bundle":
    """Open the bundle in directory ``path`` (its ``manifest.json``) with its own runtime, once every file it lists
    matches its sha256, and with ``trusted_keys`` (public key files; default ``$GLUEFORGE_TRUSTED_KEYS``) once one
    of them signed its manifest (``glueforge.verify``, ``glueforge.signing``). ``max_size``: images whose longest
    side is larger are resized down to it (a multiple of the divisor; keypoints come back in the caller's pixels);
    None: only where an engine's shape profile needs it."""
    from glueforge import signing

    directory = Path(path)
    manifest, _, _ = verify_bundle(directory, signing.trusted(signing.trust_paths(trusted_keys)))
    missing = [k for k in ("runtime", "graphs", "extractor", "keypoints") if k not in manifest]
    if missing:
        raise BundleError(f"{directory / MANIFEST}: lacks {', '.join(missing)}; it was written by an older glueforge "
                          "that the runtime API cannot run: rebuild the bundle")
    return Bundle(directory, manifest, max_size=max_size)


class Bundle:
    """A bundle ready to run; see the module docstring. Graph engines are loaded on first use."""

    def __init__(self, directory: Path, manifest: Mapping[str, Any],
                 runners: Callable[[str], GraphRunner] | None = None, max_size: int | None = None) -> None:
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
            raise BundleError(f"max_size={max_size!r}: give a positive number of pixels, or None")
        self.max_size = max_size
        self.directory = Path(directory)
        self.manifest = manifest
        self.keypoints = int(manifest["keypoints"])
        self.graphs = list(manifest["graphs"])
        self._runtime = registry.runtime(manifest["runtime"]["runtime"])
        self._runners = runners or (lambda graph: self._runtime.open_graph(self.directory, graph, self.manifest))
        self._open: dict[str, GraphRunner] = {}
        x, m = manifest["extractor"], manifest.get("matcher")
        self._extractor = x
        self._extractor_family = registry.family(x["family"])
        self._extractor_spec = self._extractor_family.Spec.model_validate(x["config"], strict=False)
        self.colour: str = x["colour"]
        self.divisor = int(x["divisor"])
        self._keypoint_inputs = list(m["keypoint_inputs"]) if m else []
        depth = (m or {}).get("depth") or {}
        rule = ExitRule.from_dict(depth) if depth.get("policy") == Policy.ADAPTIVE.value else None
        missing = [g for g in step_graphs(rule.layers) if g not in self.graphs] if rule is not None else []
        if missing:
            raise BundleError(f"{self.directory / MANIFEST}: its matcher runs at adaptive depth, but it lists no "
                              f"{', '.join(missing)}: rebuild the bundle")
        self.exit_rule = rule
        # the policy match and match_pair use by default: adaptive where the manifest states an exit rule
        self.depth = Policy.ADAPTIVE if rule is not None else Policy.FIXED

    def __repr__(self) -> str:
        m = self.manifest
        return f"<glueforge bundle {m.get('model')} {m.get('version')} for {m.get('target')} at {self.directory}>"

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for runner in self._open.values():
            runner.close()
        self._open.clear()

    @property
    def has_matcher(self) -> bool:
        return self.manifest.get("matcher") is not None

    def runner(self, graph: str) -> GraphRunner:
        """The engine of one graph, loaded on first use."""
        if graph not in self.graphs:
            raise BundleError(f"{self}: has no {graph!r} graph; its graphs: {', '.join(self.graphs)}")
        if graph not in self._open:
            self._open[graph] = self._runners(graph)
        return self._open[graph]

    def run(self, graph: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner(graph).infer(feed)

    def device_memory(self) -> int | None:
        """Bytes the loaded engines hold on the device (None: they run on the host)."""
        held = [r.device_memory() for r in self._open.values()]
        return sum(h for h in held if h is not None) if any(h is not None for h in held) else None

    # -- sizes ---------------------------------------------------------------------------------------
    def _profile(self, graph: str, tensor: str) -> tuple[list[int], list[int]] | None:
        """min and max shape of an input in the engine's shape profile (TensorRT), else None."""
        engines = self.manifest["runtime"].get("engines") or {}
        shapes = (engines.get(graph) or {}).get("profile_shapes") or {}
        return (shapes[tensor][0], shapes[tensor][2]) if tensor in shapes else None

    def fit(self, size: tuple[int, int], graph: str = "extractor") -> Fit:
        """Where a caller's (h, w) image goes in ``graph``'s ``images`` input."""
        profile = self._profile(graph, "images")
        return fit(size, self.divisor, profile[0][2:] if profile else None, profile[1][2:] if profile else None,
                   self.max_size)

    @property
    def default_max_size(self) -> int | None:
        """The longest side the command line resizes to by default on this bundle's runtime (None: full size)."""
        return getattr(self._runtime, "DEFAULT_MAX_SIZE", None)

    def max_batch(self, graph: str) -> int | None:
        """The most images (``end2end``: 2 x pairs) one call of ``graph`` takes, where its engine's profile limits it."""
        profile = self._profile(graph, "images" if graph != "matcher" else "keypoints")
        return int(profile[1][0]) if profile else None

    def matmul_rate(self) -> dict[str, Any] | None:
        """The fp32 matrix-multiply rate of the processor the engines run on, measured now by the runtime with the
        engines' settings (``glueforge.floor``); None where the runtime measures none."""
        measure = getattr(self._runtime, "matmul_rate", None)
        return measure(self.directory) if measure is not None else None

    def runtime_versions(self) -> dict[str, Any]:
        """The installed versions of this bundle's runtime, and what it was built with."""
        return {"installed": self._runtime.versions(), "built_with": {k: v for k, v in self.manifest["runtime"].items()
                                                                       if k not in ("engines", "files", "outputs", "properties")}}

    # -- extract ----------------------------------------------------------------------------------------
    def extract(self, images: Sequence[Any] | np.ndarray) -> list[Features]:
        """Local features of each image (a list of images, or one image)."""
        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and not (images.ndim == 3 and images.shape[2] > 4):
            images = [images]
        checked = [as_image(image, f"image {i}") for i, image in enumerate(images)]
        if self._extractor["host"]:
            return [self._host_features(image) for image in checked]
        fits = [self.fit(image.shape[:2]) for image in checked]
        out: list[Features | None] = [None] * len(checked)
        chunk = self.max_batch("extractor") or len(checked) or 1
        for size in dict.fromkeys(f.graph for f in fits):
            same = [i for i, f in enumerate(fits) if f.graph == size]
            for start in range(0, len(same), chunk):
                part = same[start:start + chunk]
                batch = np.stack([preprocess(checked[i], self.colour, fits[i]) for i in part])
                outputs = self.run("extractor", {"images": batch})
                if self._extractor["dense"]:
                    outputs = self._extractor_family.decode(self._extractor_spec, outputs, self.keypoints)
                for j, i in enumerate(part):
                    out[i] = self._select(outputs, j, fits[i])[0]
        return out  # type: ignore[return-value]

    def _host_features(self, image: np.ndarray) -> Features:
        """A host extractor (SIFT) on the caller's image at its own size."""
        grey = to_colour(image, "L")
        values = grey.astype(np.float32) / np.float32(255.0) if grey.dtype == np.uint8 else grey
        outputs = self._extractor_family.extract(self._extractor_spec, values[None, None], self.keypoints)
        return self._select(outputs, 0, Fit(grey.shape, grey.shape, grey.shape))[0]

    def _select(self, outputs: Mapping[str, np.ndarray], j: int, placement: Fit) -> tuple[Features, np.ndarray]:
        """Image ``j``'s real keypoints from padded graph outputs, and the slots they came from."""
        keypoints = np.asarray(outputs["keypoints"][j])
        slots = np.nonzero(placement.inside(keypoints))[0]
        take = lambda name: np.asarray(outputs[name][j])[slots] if name in outputs else None  # noqa: E731
        extra = {name: take(name) for name in self._extractor.get("keypoint_features", []) if name in outputs}
        features = Features(placement.to_caller(keypoints[slots]), take("scores"), take("descriptors"),
                            (placement.size[1], placement.size[0]), extra)
        return features, slots

    # -- match --------------------------------------------------------------------------------------
    def matcher_feed(self, features0: Features, features1: Features) -> dict[str, np.ndarray]:
        """The matcher graph's inputs for one pair: each image's features padded to K (keypoint -1,
        zero descriptor, 0 for every keypoint feature) and its (width, height)."""
        if not self.has_matcher:
            raise BundleError(f"{self}: an extractor-only model has no matcher")
        k = self.keypoints
        dim = int(self._extractor["descriptor_dim"])
        feed = {"keypoints": np.full((2, k, 2), -1.0, np.float32), "descriptors": np.zeros((2, k, dim), np.float32),
                "image_sizes": np.zeros((2, 2), np.float32),
                **{name: np.zeros((2, k), np.float32) for name in self._keypoint_inputs}}
        for i, f in enumerate((features0, features1)):
            if f.descriptors is None:
                raise BundleError(f"features{i} has no descriptors (from match_pair's end2end graph?): use extract()")
            n = len(f)
            if n > k:
                raise BundleError(f"features{i} has {n} keypoints; this bundle's matcher takes at most K={k}")
            feed["keypoints"][i, :n] = f.keypoints
            feed["descriptors"][i, :n] = f.descriptors
            feed["image_sizes"][i] = f.image_size
            for name in self._keypoint_inputs:
                if name not in f.extra:
                    raise BundleError(f"features{i} lacks {name!r}, which this matcher takes")
                feed[name][i, :n] = f.extra[name]
        return feed

    @property
    def matcher_layers(self) -> int | None:
        """The layers of the fixed-depth ``matcher`` graph (None: a manifest that does not say)."""
        depth = (self.manifest.get("matcher") or {}).get("depth") or {}
        return int(depth["layers"]) if "layers" in depth else None

    def _policy(self, depth: Policy | str | None) -> Policy:
        try:
            policy = Policy(depth) if depth is not None else self.depth
        except ValueError:
            raise BundleError(f"depth={depth!r} is not a depth policy: give {', '.join(repr(p.value) for p in Policy)} or "
                              f"None (this bundle's default: {self.depth.value!r})") from None
        if policy is Policy.ADAPTIVE and self.exit_rule is None:
            raise BundleError(f"{self}: its matcher was built at fixed depth (no depth_confidence): depth='adaptive' "
                              "needs the matcher's step graphs")
        return policy

    def match(self, features0: Features, features1: Features, depth: Policy | str | None = None) -> Matches:
        """Match two images' features (from :meth:`extract`): with the ``matcher`` graph (``depth="fixed"``), or layer
        by layer until the manifest's exit rule stops (``"adaptive"``; ``glueforge.depth``). Default: the bundle's
        policy, adaptive where it was built with ``depth_confidence``."""
        feed = self.matcher_feed(features0, features1)
        if self._policy(depth) is Policy.ADAPTIVE:
            outcome = run_layers(self.exit_rule, self.run, feed)
            outputs, layers = outcome.outputs, outcome.layers
        else:
            outputs, layers = self.run("matcher", feed), self.matcher_layers
        matches, scores = pair_matches(outputs, 0)
        padded = (matches[:, 0] >= len(features0)) | (matches[:, 1] >= len(features1))
        if padded.any():
            raise BundleError(f"{self}: the matcher matched {int(padded.sum())} padded keypoint slots; the engine is "
                              "broken (padded slots must never match)")
        return Matches(matches, scores, layers)

    def match_pair(self, image0: Any, image1: Any, depth: Policy | str | None = None) -> Pair:
        """Features of both images and their matches: the ``end2end`` graph (fixed depth) where the bundle has one, both
        images take the same graph size and the depth policy is fixed, else ``extract`` then ``match``."""
        if not self.has_matcher:
            raise BundleError(f"{self}: an extractor-only model has no matcher")
        a, b = as_image(image0, "image0"), as_image(image1, "image1")
        policy = self._policy(depth)
        if "end2end" in self.graphs and policy is Policy.FIXED:
            fits = [self.fit(a.shape[:2], "end2end"), self.fit(b.shape[:2], "end2end")]
            if fits[0].graph == fits[1].graph:
                batch = np.stack([preprocess(a, self.colour, fits[0]), preprocess(b, self.colour, fits[1])])
                outputs = self.run("end2end", {"images": batch})
                (f0, slots0), (f1, slots1) = self._select(outputs, 0, fits[0]), self._select(outputs, 1, fits[1])
                index0, index1 = np.full(self.keypoints, -1), np.full(self.keypoints, -1)
                index0[slots0], index1[slots1] = np.arange(len(slots0)), np.arange(len(slots1))
                matches, scores = pair_matches(outputs, 0)
                slots = [np.asarray(outputs["keypoints"][i])[:, 0] < 0 for i in (0, 1)]
                padded = slots[0][matches[:, 0]] | slots[1][matches[:, 1]]
                if padded.any():
                    raise BundleError(f"{self}: the end2end graph matched {int(padded.sum())} padded keypoint slots; the "
                                      "engine is broken (padded slots must never match)")
                i0, i1 = index0[matches[:, 0]], index1[matches[:, 1]]
                keep = (i0 >= 0) & (i1 >= 0)  # a keypoint in the zero padding is dropped with its matches
                return Pair(f0, f1, np.stack([i0[keep], i1[keep]], axis=1).astype(np.int64), scores[keep], self.matcher_layers)
        f0, f1 = self.extract([a, b])
        found = self.match(f0, f1, policy)
        return Pair(f0, f1, found.matches, found.scores, found.layers)

"""SuperPoint (DeTone et al. 2018), written here in PyTorch (kornia has no SuperPoint).

Two weight layouts (``variant``):

- ``magicleap``: Magic Leap's ``superpoint_v1.pth`` as cvg/LightGlue loads it
  (``lightglue/superpoint.py``, commit 1fd587b of 2025-07-05): plain ``nn.Conv2d`` layers
  ``conv1a`` .. ``conv4b``, ``convPa``/``convPb`` (detector, 65 channels) and ``convDa``/``convDb``
  (descriptor, 256), ReLU after every conv except the two heads' last. Default detection
  threshold 0.0005 (LightGlue's ``default_conf``).
- ``open``: rpautrat/SuperPoint's ``superpoint_pytorch.py`` (commit ccf3008), the retrained
  open model ``weights/superpoint_v6_from_tf.pth``: ``VGGBlock`` = ``conv`` -> ``activation``
  (ReLU, or Identity for the heads' last block) -> ``bn`` (``BatchNorm2d(eps=0.001)``), stacked as
  ``backbone.{0..3}.{0,1}`` (a ``MaxPool2d(2)`` at ``backbone.{0,1,2}.2``), ``detector.{0,1}`` and
  ``descriptor.{0,1}``. Default detection threshold 0.005 (rpautrat's ``default_conf``).

Both read through the code-search index and a mirror of cvg/LightGlue; the upstream forwards
are reproduced below as written (``MagicLeapSuperPoint.forward``, ``OpenSuperPoint.forward``):
they are ``reference``.

Post-processing, identical in both upstreams except for the descriptor sampling:
softmax over each 8 x 8 cell's 65 channels (64 pixels and a "no keypoint" dustbin), the
dustbin dropped, pixel shuffle to a full-resolution score map; ``simple_nms``/``batched_nms`` (max-pool NMS with two rounds of re-admitting maxima
outside the suppressed zones); scores within ``remove_borders`` px of the image edge set to -1;
keypoints are the pixels with score > ``detection_threshold``, the ``max_num_keypoints``
strongest kept (``torch.topk``, sorted) when more pass, else all of them in raster order.
Keypoints are the integer pixel indices (x, y): neither upstream adds 0.5 in ``forward``
(LightGlue's ``Extractor.extract`` maps ``(kp + 0.5) / scale - 0.5``, the identity at scale 1,
and the graph runs at the input size). The descriptor map is L2-normalised, sampled bilinearly
at the keypoints with ``grid_sample`` and L2-normalised again:

- magicleap: ``(kp - s/2 + 0.5) / (w*s - s/2 - 0.5) * 2 - 1`` with ``align_corners=True``
  (s = 8, w the coarse width), i.e. coarse coordinate ``(x - 3.5) / (W - 4.5) * (w - 1)``;
- open: ``(kp + 0.5) / (w*s) * 2 - 1`` with ``align_corners=False``, i.e. ``(x + 0.5) / 8 - 0.5``.

Both zero-pad outside the map (``grid_sample``'s default), which only matters with
``remove_borders`` < 4.

Export (``build``): the same network and post-processing with a fixed K: NMS as upstream
(MaxPool, Where), the border as a mask from ``arange(H)``/``arange(W)``, one ``TopK`` of K over
the flattened map, descriptors by ``grid_sample`` at the K positions. Slots whose score is not
above the threshold are padding (keypoint -1, score 0, zero descriptor), and they come last
since TopK sorts. So the real slots are upstream's keypoints, sorted by score (upstream returns
them in raster order when fewer than K pass). ``mode: dense`` exports the maps instead and
``decode`` does the same selection in NumPy on the host.

Exact score ties: ``decode`` and ONNX TopK put the lower raster index first; torch's CPU
``topk`` (upstream, and this module run in PyTorch) does not promise an order, so tied slots may
come in another order, and a tie across the K-th slot may keep another of its members.

H and W must be multiples of 8 and H * W >= K (TopK over the full map).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping

import numpy as np
from pydantic import Field, model_validator
from typing_extensions import Annotated

from glueforge import GlueforgeError
from glueforge.schema import PADDING, ExtractorSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

STRIDE = 8  # the encoder's downsampling: one 65-channel cell per 8 x 8 pixels
DESCRIPTOR_DIM = 256
# upstream defaults of the detection threshold: cvg/LightGlue's and rpautrat/SuperPoint's default_conf
DEFAULT_THRESHOLD = {"magicleap": 0.0005, "open": 0.005}
DETECTOR_GAIN = 2.0  # random_state_dict: the scale of the detector's last layer (see there)


class SuperPointError(GlueforgeError):
    """An unknown variant, or dense outputs that ``decode`` cannot read."""


class Spec(ExtractorSpec):
    channels: ClassVar[int] = 1
    colour: ClassVar[str] = "L"
    divisor: ClassVar[int] = STRIDE
    family: Literal["superpoint"]
    variant: Literal["magicleap", "open"] = "magicleap"
    # keypoints: the graph returns K keypoints; dense: it returns the maps and ``decode`` selects on the host
    mode: Literal["keypoints", "dense"] = "keypoints"
    nms_radius: Annotated[int, Field(ge=0, le=16)] = 4
    remove_borders: Annotated[int, Field(ge=0, le=64)] = 4
    # default per variant (DEFAULT_THRESHOLD): magicleap 0.0005 as cvg/LightGlue, open 0.005 as rpautrat/SuperPoint
    detection_threshold: Annotated[float, Field(ge=0.0, lt=1.0)] = DEFAULT_THRESHOLD["magicleap"]

    @model_validator(mode="before")
    @classmethod
    def _threshold_of_variant(cls, data: Any) -> Any:
        if isinstance(data, dict) and "detection_threshold" not in data:
            variant = data.get("variant", "magicleap")
            if variant in DEFAULT_THRESHOLD:
                data = {**data, "detection_threshold": DEFAULT_THRESHOLD[variant]}
        return data

    @property
    def descriptor_dim(self) -> int:
        return DESCRIPTOR_DIM

    @property
    def dense(self) -> bool:
        return self.mode == "dense"

    def extractor_outputs(self, keypoints: int) -> list[tuple[str, str, tuple[int | str, ...]]]:
        """Dense mode: ``scores (N, H, W)``, the full-resolution score map after softmax and pixel
        shuffle, before NMS; ``descriptors (N, 256, H/8, W/8)``, the L2-normalised coarse map."""
        if not self.dense:
            return super().extractor_outputs(keypoints)
        return [("scores", "float32", ("N", "H", "W")),
                ("descriptors", "float32", ("N", DESCRIPTOR_DIM, "H/8", "W/8"))]


# -- the networks, as upstream writes them ---------------------------------------------------------
# Defined on first use: family modules import torch only inside functions.

@functools.cache
def _torch_classes() -> SimpleNamespace:
    import torch
    import torch.nn.functional as F
    from collections import OrderedDict
    from torch import nn

    def simple_nms(scores: torch.Tensor, nms_radius: int) -> torch.Tensor:
        """Upstream's max-pool NMS (cvg/LightGlue ``simple_nms`` = rpautrat ``batched_nms``), verbatim.
        ``scores`` (B, H, W) or (B, 1, H, W) -> the same shape, non-maxima set to 0."""
        assert nms_radius >= 0

        def max_pool(x):
            return F.max_pool2d(x, kernel_size=nms_radius * 2 + 1, stride=1, padding=nms_radius)

        zeros = torch.zeros_like(scores)
        max_mask = scores == max_pool(scores)
        for _ in range(2):
            supp_mask = max_pool(max_mask.float()) > 0
            supp_scores = torch.where(supp_mask, zeros, scores)
            new_max_mask = supp_scores == max_pool(supp_scores)
            max_mask = max_mask | (new_max_mask & (~supp_mask))
        return torch.where(max_mask, scores, zeros)

    def top_k_keypoints(keypoints, scores, k):
        if k >= len(keypoints):
            return keypoints, scores
        scores, indices = torch.topk(scores, k, dim=0, sorted=True)
        return keypoints[indices], scores

    def sample_descriptors_magicleap(keypoints, descriptors, s: int = 8):
        """cvg/LightGlue ``sample_descriptors``."""
        b, c, h, w = descriptors.shape
        keypoints = keypoints - s / 2 + 0.5
        keypoints /= torch.tensor([(w * s - s / 2 - 0.5), (h * s - s / 2 - 0.5)]).to(keypoints)[None]
        keypoints = keypoints * 2 - 1  # normalize to (-1, 1)
        descriptors = F.grid_sample(descriptors, keypoints.view(b, 1, -1, 2), mode="bilinear", align_corners=True)
        return F.normalize(descriptors.reshape(b, c, -1), p=2, dim=1)

    def sample_descriptors_open(keypoints, descriptors, s: int = 8):
        """rpautrat/SuperPoint ``sample_descriptors``."""
        b, c, h, w = descriptors.shape
        keypoints = (keypoints + 0.5) / (keypoints.new_tensor([w, h]) * s)
        keypoints = keypoints * 2 - 1  # normalize to (-1, 1)
        descriptors = F.grid_sample(descriptors, keypoints.view(b, 1, -1, 2), mode="bilinear", align_corners=False)
        return F.normalize(descriptors.reshape(b, c, -1), p=2, dim=1)

    def grey(image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] == 3:  # RGB
            scale = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            image = (image * scale).sum(1, keepdim=True)
        return image

    class MagicLeapSuperPoint(nn.Module):
        """cvg/LightGlue ``SuperPoint`` (Magic Leap's weights), without the download in ``__init__``."""

        default_conf = {"descriptor_dim": 256, "nms_radius": 4, "max_num_keypoints": None,
                        "detection_threshold": 0.0005, "remove_borders": 4}

        def __init__(self, **conf: Any) -> None:
            super().__init__()
            self.conf = SimpleNamespace(**{**self.default_conf, **conf})
            self.relu = nn.ReLU(inplace=True)
            self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
            c1, c2, c3, c4, c5 = 64, 64, 128, 128, 256
            self.conv1a = nn.Conv2d(1, c1, kernel_size=3, stride=1, padding=1)
            self.conv1b = nn.Conv2d(c1, c1, kernel_size=3, stride=1, padding=1)
            self.conv2a = nn.Conv2d(c1, c2, kernel_size=3, stride=1, padding=1)
            self.conv2b = nn.Conv2d(c2, c2, kernel_size=3, stride=1, padding=1)
            self.conv3a = nn.Conv2d(c2, c3, kernel_size=3, stride=1, padding=1)
            self.conv3b = nn.Conv2d(c3, c3, kernel_size=3, stride=1, padding=1)
            self.conv4a = nn.Conv2d(c3, c4, kernel_size=3, stride=1, padding=1)
            self.conv4b = nn.Conv2d(c4, c4, kernel_size=3, stride=1, padding=1)
            self.convPa = nn.Conv2d(c4, c5, kernel_size=3, stride=1, padding=1)
            self.convPb = nn.Conv2d(c5, 65, kernel_size=1, stride=1, padding=0)
            self.convDa = nn.Conv2d(c4, c5, kernel_size=3, stride=1, padding=1)
            self.convDb = nn.Conv2d(c5, self.conf.descriptor_dim, kernel_size=1, stride=1, padding=0)

        def forward(self, data: dict) -> dict:
            image = grey(data["image"])
            # Shared Encoder
            x = self.relu(self.conv1a(image))
            x = self.relu(self.conv1b(x))
            x = self.pool(x)
            x = self.relu(self.conv2a(x))
            x = self.relu(self.conv2b(x))
            x = self.pool(x)
            x = self.relu(self.conv3a(x))
            x = self.relu(self.conv3b(x))
            x = self.pool(x)
            x = self.relu(self.conv4a(x))
            x = self.relu(self.conv4b(x))
            # Compute the dense keypoint scores
            cPa = self.relu(self.convPa(x))
            scores = self.convPb(cPa)
            scores = F.softmax(scores, 1)[:, :-1]
            b, _, h, w = scores.shape
            scores = scores.permute(0, 2, 3, 1).reshape(b, h, w, 8, 8)
            scores = scores.permute(0, 1, 3, 2, 4).reshape(b, h * 8, w * 8)
            scores = simple_nms(scores, self.conf.nms_radius)
            # Discard keypoints near the image borders
            if self.conf.remove_borders:
                pad = self.conf.remove_borders
                scores[:, :pad] = -1
                scores[:, :, :pad] = -1
                scores[:, -pad:] = -1
                scores[:, :, -pad:] = -1
            # Extract keypoints
            best_kp = torch.where(scores > self.conf.detection_threshold)
            scores = scores[best_kp]
            # Separate into batches
            keypoints = [torch.stack(best_kp[1:3], dim=-1)[best_kp[0] == i] for i in range(b)]
            scores = [scores[best_kp[0] == i] for i in range(b)]
            # Keep the k keypoints with highest score
            if self.conf.max_num_keypoints is not None:
                keypoints, scores = list(zip(*[top_k_keypoints(k, s, self.conf.max_num_keypoints)
                                               for k, s in zip(keypoints, scores)]))
            # Convert (h, w) to (x, y)
            keypoints = [torch.flip(k, [1]).float() for k in keypoints]
            # Compute the dense descriptors
            cDa = self.relu(self.convDa(x))
            descriptors = self.convDb(cDa)
            descriptors = F.normalize(descriptors, p=2, dim=1)
            # Extract descriptors
            descriptors = [sample_descriptors_magicleap(k[None], d[None], 8)[0] for k, d in zip(keypoints, descriptors)]
            return {"keypoints": torch.stack(keypoints, 0), "keypoint_scores": torch.stack(scores, 0),
                    "descriptors": torch.stack(descriptors, 0).transpose(-1, -2).contiguous()}

    class VGGBlock(nn.Sequential):
        """rpautrat/SuperPoint ``VGGBlock``: conv -> activation -> BatchNorm (eps 0.001)."""

        def __init__(self, c_in: int, c_out: int, kernel_size: int, relu: bool = True) -> None:
            padding = (kernel_size - 1) // 2
            conv = nn.Conv2d(c_in, c_out, kernel_size=kernel_size, stride=1, padding=padding)
            activation = nn.ReLU(inplace=True) if relu else nn.Identity()
            bn = nn.BatchNorm2d(c_out, eps=0.001)
            super().__init__(OrderedDict([("conv", conv), ("activation", activation), ("bn", bn)]))

    class OpenSuperPoint(nn.Module):
        """rpautrat/SuperPoint ``superpoint_pytorch.SuperPoint``."""

        default_conf = {"nms_radius": 4, "max_num_keypoints": None, "detection_threshold": 0.005,
                        "remove_borders": 4, "descriptor_dim": 256, "channels": [64, 64, 128, 128, 256]}

        def __init__(self, **conf: Any) -> None:
            super().__init__()
            self.conf = SimpleNamespace(**{**self.default_conf, **conf})
            self.stride = 2 ** (len(self.conf.channels) - 2)
            channels = [1, *self.conf.channels[:-1]]
            backbone = []
            for i, c in enumerate(channels[1:], 1):
                layers = [VGGBlock(channels[i - 1], c, 3), VGGBlock(c, c, 3)]
                if i < len(channels) - 1:
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                backbone.append(nn.Sequential(*layers))
            self.backbone = nn.Sequential(*backbone)
            c = self.conf.channels[-1]
            self.detector = nn.Sequential(VGGBlock(channels[-1], c, 3), VGGBlock(c, self.stride**2 + 1, 1, relu=False))
            self.descriptor = nn.Sequential(VGGBlock(channels[-1], c, 3),
                                            VGGBlock(c, self.conf.descriptor_dim, 1, relu=False))

        def forward(self, data: dict) -> dict:
            image = grey(data["image"])
            features = self.backbone(image)
            descriptors_dense = F.normalize(self.descriptor(features), p=2, dim=1)
            # Decode the detection scores
            scores = self.detector(features)
            scores = F.softmax(scores, 1)[:, :-1]
            b, _, h, w = scores.shape
            scores = scores.permute(0, 2, 3, 1).reshape(b, h, w, self.stride, self.stride)
            scores = scores.permute(0, 1, 3, 2, 4).reshape(b, h * self.stride, w * self.stride)
            scores = simple_nms(scores, self.conf.nms_radius)
            # Discard keypoints near the image borders
            if self.conf.remove_borders:
                pad = self.conf.remove_borders
                scores[:, :pad] = -1
                scores[:, :, :pad] = -1
                scores[:, -pad:] = -1
                scores[:, :, -pad:] = -1
            # Extract keypoints
            if b > 1:
                idxs = torch.where(scores > self.conf.detection_threshold)
                mask = idxs[0] == torch.arange(b, device=scores.device)[:, None]
            else:  # Faster shortcut
                scores = scores.squeeze(0)
                idxs = torch.where(scores > self.conf.detection_threshold)
            # Convert (i, j) to (x, y)
            keypoints_all = torch.stack(idxs[-2:], dim=-1).flip(1).float()
            scores_all = scores[idxs]
            keypoints, scores, descriptors = [], [], []
            for i in range(b):
                if b > 1:
                    k, s = keypoints_all[mask[i]], scores_all[mask[i]]
                else:
                    k, s = keypoints_all, scores_all
                if self.conf.max_num_keypoints is not None:
                    k, s = top_k_keypoints(k, s, self.conf.max_num_keypoints)
                d = sample_descriptors_open(k[None], descriptors_dense[i, None], self.stride)
                keypoints.append(k)
                scores.append(s)
                descriptors.append(d.squeeze(0).transpose(0, 1))
            return {"keypoints": keypoints, "keypoint_scores": scores, "descriptors": descriptors}

    # -- the export module: the upstream layers, shape-static post-processing ------------------------
    class SuperPointExport(nn.Module):
        """Export forward (the only replacement of upstream code in this family).

        Upstream's ``forward`` selects keypoints with ``torch.where`` (NonZero: a data-dependent
        count), writes the border with in-place slice assignment, loops over the batch in Python
        and returns per-image lists; none of that exports to a graph with fixed outputs.
        Here, on the same layers and weights: the encoder and heads as upstream; the score map
        pixel-shuffled by upstream's permute/reshape (its sizes from the traced shape);
        ``simple_nms`` verbatim (MaxPool, Equal, Where); the border as a mask from ``arange`` of
        the traced H and W; one ``TopK`` of exactly K per image (sorted; the slots whose score is
        not above the threshold are padding, and come last); descriptors by upstream's
        ``grid_sample`` convention with the map size taken from the traced shape, not a Python
        constant; the flat index split into x, y by Mod and (truncating, exact for >= 0) Div.

        ``images (N, 1, H, W)`` -> keypoints mode: ``keypoints (N, K, 2)``, ``scores (N, K)``,
        ``descriptors (N, K, 256)``; dense mode: ``scores (N, H, W)`` (after softmax and pixel
        shuffle, before NMS), ``descriptors (N, 256, H/8, W/8)`` (L2-normalised).
        Parity: tests/test_superpoint.py::test_keypoints_mode_matches_reference,
        ::test_dense_decode_equals_keypoints_mode, ::test_onnx_dynamic_size_matches_torch.
        """

        def __init__(self, net: nn.Module, variant: str, mode: str, nms_radius: int, remove_borders: int,
                     threshold: float, keypoints: int) -> None:
            super().__init__()
            self.net = net
            self.variant, self.mode = variant, mode
            self.nms_radius, self.remove_borders = nms_radius, remove_borders
            self.threshold, self.keypoints = threshold, keypoints

        def maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """``images (N, 1, H, W)`` -> scores ``(N, H, W)`` before NMS, descriptors ``(N, 256, H/8, W/8)``."""
            net, image = self.net, images  # one grey channel (Spec.channels): no RGB branch in the graph
            if self.variant == "magicleap":
                x = net.relu(net.conv1a(image))
                x = net.relu(net.conv1b(x))
                x = net.pool(x)
                x = net.relu(net.conv2a(x))
                x = net.relu(net.conv2b(x))
                x = net.pool(x)
                x = net.relu(net.conv3a(x))
                x = net.relu(net.conv3b(x))
                x = net.pool(x)
                x = net.relu(net.conv4a(x))
                x = net.relu(net.conv4b(x))
                logits = net.convPb(net.relu(net.convPa(x)))
                descriptors = net.convDb(net.relu(net.convDa(x)))
            else:
                features = net.backbone(image)
                logits = net.detector(features)
                descriptors = net.descriptor(features)
            descriptors = F.normalize(descriptors, p=2, dim=1)
            scores = F.softmax(logits, 1)[:, :-1]
            b, _, h, w = scores.shape
            scores = scores.permute(0, 2, 3, 1).reshape(b, h, w, STRIDE, STRIDE)
            scores = scores.permute(0, 1, 3, 2, 4).reshape(b, h * STRIDE, w * STRIDE)
            return scores, descriptors

        def select(self, scores: torch.Tensor, descriptors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            """``scores (N, H, W)`` before NMS, ``descriptors (N, D, h, w)`` -> the K strongest keypoints
            ``(N, K, 2)`` (x, y) px, their scores ``(N, K)`` and descriptors ``(N, K, D)``, padded."""
            n, h, w = scores.shape
            scores = simple_nms(scores.unsqueeze(1), self.nms_radius)  # MaxPool takes (N, C, H, W)
            if self.remove_borders:
                pad = self.remove_borders
                ys = torch.arange(h, device=scores.device).view(1, 1, h, 1)
                xs = torch.arange(w, device=scores.device).view(1, 1, 1, w)
                inside = (ys >= pad) & (ys < h - pad) & (xs >= pad) & (xs < w - pad)
                scores = torch.where(inside, scores, torch.full_like(scores, -1.0))
            top, index = torch.topk(scores.reshape(n, -1), self.keypoints, dim=1, largest=True, sorted=True)
            valid = top > self.threshold
            x = (index % w).to(scores.dtype)
            y = torch.div(index, w, rounding_mode="trunc").to(scores.dtype)  # index >= 0: trunc = floor
            keypoints = torch.stack([x, y], dim=-1)  # (N, K, 2)
            _, d, dh, dw = descriptors.shape
            if self.variant == "magicleap":  # cvg/LightGlue sample_descriptors, align_corners=True
                gx = (x - STRIDE / 2 + 0.5) / (dw * STRIDE - STRIDE / 2 - 0.5) * 2 - 1
                gy = (y - STRIDE / 2 + 0.5) / (dh * STRIDE - STRIDE / 2 - 0.5) * 2 - 1
                align = True
            else:  # rpautrat sample_descriptors, align_corners=False
                gx = (x + 0.5) / (dw * STRIDE) * 2 - 1
                gy = (y + 0.5) / (dh * STRIDE) * 2 - 1
                align = False
            grid = torch.stack([gx, gy], dim=-1).unsqueeze(1)  # (N, 1, K, 2)
            sampled = F.grid_sample(descriptors, grid, mode="bilinear", align_corners=align)  # (N, D, 1, K)
            sampled = F.normalize(sampled.reshape(n, d, -1), p=2, dim=1).transpose(1, 2)  # (N, K, D)
            keypoints = torch.where(valid.unsqueeze(-1), keypoints, torch.full_like(keypoints, PADDING))
            sampled = torch.where(valid.unsqueeze(-1), sampled, torch.zeros_like(sampled))
            top = torch.where(valid, top, torch.zeros_like(top))
            return keypoints, top, sampled

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            scores, descriptors = self.maps(images)
            if self.mode == "dense":
                return scores, descriptors
            return self.select(scores, descriptors)

    return SimpleNamespace(simple_nms=simple_nms, MagicLeapSuperPoint=MagicLeapSuperPoint, VGGBlock=VGGBlock,
                           OpenSuperPoint=OpenSuperPoint, SuperPointExport=SuperPointExport)


def upstream_model(variant: str, **conf: Any) -> nn.Module:
    """The upstream network of ``variant`` with upstream's ``conf`` keys (random weights, train mode)."""
    classes = _torch_classes()
    if variant == "magicleap":
        return classes.MagicLeapSuperPoint(**conf)
    if variant == "open":
        return classes.OpenSuperPoint(**conf)
    raise SuperPointError(f"unknown SuperPoint variant {variant!r}; known: magicleap, open")


def random_state_dict(variant: str, seed: int) -> dict[str, torch.Tensor]:
    """A seeded random checkpoint in upstream's layout (key names and shapes) of ``variant``.

    PyTorch's default initialisation shrinks the signal at every layer, so after eleven
    convolutions the detector would see mostly its biases: an almost periodic, nearly uniform
    score map (softmax ~ 1/65 everywhere) full of near-ties. Instead the convolutions get He
    initialisation (N(0, 2 / fan_in)) and biases ~ N(0, 0.01^2); the detector's last layer is
    scaled (``DETECTOR_GAIN``) so its logits vary by a few units across the image, as a trained
    detector's do, and its dustbin channel gets a bias of +3 so most pixels score well below the
    cell maxima. BatchNorm (``open``): weights and running variances in [0.5, 1.5], biases and
    running means ~ N(0, 0.1^2). The detector then still yields keypoints above both default
    thresholds (the tests check it).
    """
    import math

    import torch

    generator = torch.Generator().manual_seed(seed)
    model = upstream_model(variant)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    detector_last = "convPb" if variant == "magicleap" else "detector.1.conv"
    for key, value in state.items():
        if not value.is_floating_point():
            continue  # BatchNorm's num_batches_tracked
        if key.endswith(("bn.weight", "running_var")):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif key.endswith(("bn.bias", "running_mean")):
            state[key] = 0.1 * torch.randn(value.shape, generator=generator)
        elif key.endswith("weight"):  # a convolution (out, in, kh, kw)
            fan_in = value[0].numel()
            gain = DETECTOR_GAIN if key.startswith(detector_last) else math.sqrt(2.0)
            state[key] = gain / math.sqrt(fan_in) * torch.randn(value.shape, generator=generator)
        else:  # a convolution's bias
            state[key] = 0.01 * torch.randn(value.shape, generator=generator)
            if key.startswith(detector_last):
                state[key][-1] += 3.0  # the dustbin
    return state


def _load(spec: Spec, weights: Path, **conf: Any) -> nn.Module:
    """The upstream model of ``spec.variant`` with ``weights``, loaded strictly (every key, every shape)."""
    from glueforge.weights import WeightsError, load_checkpoint

    model = upstream_model(spec.variant, nms_radius=spec.nms_radius, remove_borders=spec.remove_borders,
                           detection_threshold=spec.detection_threshold, **conf)
    state = load_checkpoint(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise WeightsError(f"{weights}: not a SuperPoint {spec.variant!r} checkpoint: {detail[:600]}") from None
    log.debug("SuperPoint %s: %d tensors from %s", spec.variant, len(state), weights)
    return model.eval()


def reference(spec: Spec, weights: Path, settings: Any):
    """The upstream forward (cvg/LightGlue for magicleap, rpautrat/SuperPoint for open) with
    ``max_num_keypoints = settings.keypoints``, one image at a time.

    ``images (N, 1, H, W)`` -> per image ``{"keypoints" (n, 2), "scores" (n,), "descriptors" (n, 256)}``,
    n <= K, unpadded, in upstream's order (by score when more than K pass, else raster order).
    """
    import torch

    model = _load(spec, weights, max_num_keypoints=int(settings.keypoints))

    def extract(images) -> list[dict[str, np.ndarray]]:
        if not isinstance(images, torch.Tensor):
            images = torch.from_numpy(np.asarray(images, dtype=np.float32))
        out = []
        with torch.inference_mode():
            for image in images:
                f = model({"image": image[None].float()})
                first = {k: v[0] for k, v in f.items()}  # stacked (magicleap) or per-image lists (open)
                out.append({"keypoints": first["keypoints"].numpy().astype(np.float32),
                            "scores": first["keypoint_scores"].numpy().astype(np.float32),
                            "descriptors": first["descriptors"].numpy().astype(np.float32)})
        return out

    return extract


def build(spec: Spec, weights: Path, settings: Any):
    """The export module on the upstream layers (``SuperPointExport``):

    keypoints mode: ``images (N, 1, H, W) -> keypoints (N, K, 2), scores (N, K), descriptors (N, K, 256)``;
    dense mode: ``images -> scores (N, H, W)`` (before NMS), ``descriptors (N, 256, H/8, W/8)``.
    """
    model = _load(spec, weights)
    return _torch_classes().SuperPointExport(model, spec.variant, spec.mode, spec.nms_radius, spec.remove_borders,
                                             spec.detection_threshold, int(settings.keypoints)).eval()


# -- host-side decoding of the dense outputs (NumPy only) ----------------------------------------

def _max_pool(x: np.ndarray, radius: int) -> np.ndarray:
    """``F.max_pool2d(x, 2r + 1, stride=1, padding=r)`` over the last two axes (padding is -inf),
    as two separable 1-D maxima (exact: max is associative)."""
    if radius == 0:
        return x
    h, w = x.shape[-2:]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(radius, radius), (0, 0)], constant_values=-np.inf)
    rows = padded[..., 0:h, :]
    for i in range(1, 2 * radius + 1):
        rows = np.maximum(rows, padded[..., i:i + h, :])
    padded = np.pad(rows, [(0, 0)] * (x.ndim - 1) + [(radius, radius)], constant_values=-np.inf)
    out = padded[..., 0:w]
    for i in range(1, 2 * radius + 1):
        out = np.maximum(out, padded[..., i:i + w])
    return out


def simple_nms(scores: np.ndarray, radius: int) -> np.ndarray:
    """Upstream's ``simple_nms`` in NumPy: ``scores (N, H, W)`` -> non-maxima set to 0."""
    zeros = np.zeros_like(scores)
    max_mask = scores == _max_pool(scores, radius)
    for _ in range(2):
        supp_mask = _max_pool(max_mask.astype(scores.dtype), radius) > 0
        supp_scores = np.where(supp_mask, zeros, scores)
        new_max_mask = supp_scores == _max_pool(supp_scores, radius)
        max_mask = max_mask | (new_max_mask & ~supp_mask)
    return np.where(max_mask, scores, zeros)


def _bilinear(descriptors: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``grid_sample(mode="bilinear", padding_mode="zeros")`` of ``descriptors (D, h, w)`` at coarse
    pixel coordinates ``u`` (x), ``v`` (y) ``(K,)`` -> ``(K, D)``; taps outside the map read 0."""
    d, h, w = descriptors.shape
    x0, y0 = np.floor(u), np.floor(v)
    out = np.zeros((len(u), d), dtype=np.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - np.abs(u - xi)) * (1 - np.abs(v - yi))
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            xc, yc = np.clip(xi, 0, w - 1).astype(np.int64), np.clip(yi, 0, h - 1).astype(np.int64)
            out += np.where(inside, weight, 0.0)[:, None] * descriptors[:, yc, xc].T
    return out


def decode(spec: Spec, outputs: Mapping[str, np.ndarray], keypoints: int) -> dict[str, np.ndarray]:
    """The dense graph's outputs -> what the keypoints graph returns, on the host in NumPy.

    ``outputs``: ``scores (N, H, W)`` before NMS, ``descriptors (N, 256, H/8, W/8)`` L2-normalised.
    Returns ``keypoints (N, K, 2)`` (x, y) px, ``scores (N, K)``, ``descriptors (N, K, 256)``, float32,
    padded (keypoint -1, score 0, zero descriptor) where fewer than K pass. Upstream's NMS, border
    and threshold; the K strongest, ties broken by the lower raster index (ONNX TopK's rule);
    upstream's ``grid_sample`` convention of ``spec.variant``; L2 normalisation (eps 1e-12).
    """
    missing = [name for name in ("scores", "descriptors") if name not in outputs]
    if missing:
        raise SuperPointError(f"SuperPoint decode: outputs lack {', '.join(missing)} (has {', '.join(outputs)})")
    scores = np.asarray(outputs["scores"], dtype=np.float32)
    dense = np.asarray(outputs["descriptors"], dtype=np.float32)
    if scores.ndim != 3 or dense.ndim != 4 or dense.shape[0] != scores.shape[0] \
            or (dense.shape[2] * STRIDE, dense.shape[3] * STRIDE) != scores.shape[1:]:
        raise SuperPointError(f"SuperPoint decode: scores {scores.shape} and descriptors {dense.shape} are not "
                              f"(N, H, W) and (N, D, H/{STRIDE}, W/{STRIDE})")
    n, h, w = scores.shape
    k = int(keypoints)
    if h * w < k:
        raise SuperPointError(f"SuperPoint decode: a {h} x {w} score map has fewer than keypoints={k} pixels")
    scores = simple_nms(scores, spec.nms_radius)
    if spec.remove_borders:
        pad = spec.remove_borders
        ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
        inside = (ys >= pad) & (ys < h - pad) & (xs >= pad) & (xs < w - pad)
        scores = np.where(inside[None], scores, np.float32(-1.0))
    flat = scores.reshape(n, -1)
    out_kp = np.full((n, k, 2), PADDING, dtype=np.float32)
    out_scores = np.zeros((n, k), dtype=np.float32)
    out_desc = np.zeros((n, k, dense.shape[1]), dtype=np.float32)
    _, _, dh, dw = dense.shape
    for i in range(n):
        order = np.argsort(-flat[i], kind="stable")[:k]
        top = flat[i, order]
        valid = top > np.float32(spec.detection_threshold)
        index = order[valid]
        x, y = (index % w).astype(np.float64), (index // w).astype(np.float64)
        if spec.variant == "magicleap":  # align_corners=True: ((g + 1) / 2) * (size - 1)
            u = (x - STRIDE / 2 + 0.5) / (dw * STRIDE - STRIDE / 2 - 0.5) * (dw - 1)
            v = (y - STRIDE / 2 + 0.5) / (dh * STRIDE - STRIDE / 2 - 0.5) * (dh - 1)
        else:  # align_corners=False: ((g + 1) * size - 1) / 2
            u = (x + 0.5) / STRIDE - 0.5
            v = (y + 0.5) / STRIDE - 0.5
        sampled = _bilinear(dense[i], u, v)
        sampled /= np.maximum(np.linalg.norm(sampled, axis=1, keepdims=True), 1e-12)
        m = len(index)
        out_kp[i, :m] = np.stack([x, y], axis=-1)
        out_scores[i, :m] = top[valid]
        out_desc[i, :m] = sampled
    return {"keypoints": out_kp, "scores": out_scores, "descriptors": out_desc}

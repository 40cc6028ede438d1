"""Shape-static keypoint selection shared by the detector patches.

The helpers keep every shape a function of the input shape and K only, so they export to
plain MaxPool / TopK / Gather ONNX ops with no data-dependent dimension.

An image with fewer than K local maxima: :func:`top_k_valid_maxima` says which of the K
slots hold a maximum, so the caller can write padding (``glueforge.schema.PADDING``: keypoint
(-1, -1), score 0, zero descriptor) into the others, as DISK does (kornia returns only the
maxima). :func:`top_k_maxima` keeps the older behaviour its callers rely on: the slots are
filled with the strongest non-maxima.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def local_maxima(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Max-pool non-maximum suppression.

    Args:
        scores: ``(B, 1, H, W)`` score map.
        radius: half window; the window is ``2 * radius + 1`` square.

    Returns:
        ``(B, 1, H, W)`` bool: local maxima whose whole window lies inside the map. This is
        kornia's ``nms2d`` (strict maxima, border strip excluded) up to exact float ties.
    """
    k = 2 * radius + 1
    pooled = F.max_pool2d(scores, kernel_size=k, stride=1, padding=radius)
    return (scores == pooled) & inside(scores, radius)


def inside(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """``(1, 1, H, W)`` bool: the pixels at least ``radius`` from every edge of the ``(B, 1, H, W)`` map."""
    h, w = scores.shape[-2:]
    ys = torch.arange(h, device=scores.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=scores.device).view(1, 1, 1, w)
    return (ys >= radius) & (ys < h - radius) & (xs >= radius) & (xs < w - radius)


def top_k_valid_maxima(scores: torch.Tensor, radius: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` strongest local maxima of each map, and which slots hold one.

    Args:
        scores: ``(B, 1, H, W)`` score map.
        radius: NMS half window.
        k: keypoint count; must not exceed ``H * W``.

    Returns:
        ``xy`` ``(B, k, 2)`` int64 pixel coordinates (x, y), strongest first; ``flat`` ``(B, k)``
        int64 indices into the flattened ``H * W`` map; ``valid`` ``(B, k)`` bool, False for the
        slots past a map's last maximum (there ``xy`` and ``flat`` are its strongest non-maxima,
        at least ``radius`` from the border while ``k <= (H - 2 radius) (W - 2 radius)``, so
        gathers at them and windows around them stay valid).
    """
    b, _, h, w = scores.shape
    maxima = local_maxima(scores, radius)
    # Non-maxima rank below every maximum, those at the border below the others, and stay ordered
    # by score within each group: a filler is at least ``radius`` inside the map whenever K allows,
    # so a (2 radius + 1)^2 window around any slot stays inside it (ALIKED's soft-argmax reads one).
    floor = scores.detach().amin(dim=(2, 3), keepdim=True)
    span = scores.detach().amax(dim=(2, 3), keepdim=True) - floor + 1.0
    fill = torch.where(inside(scores, radius), scores - span, scores - 2 * span)
    ranked = torch.where(maxima, scores, fill).reshape(b, h * w)
    flat = torch.topk(ranked, k, dim=1, largest=True, sorted=True).indices
    xy = torch.stack([flat % w, torch.div(flat, w, rounding_mode="floor")], dim=-1)
    valid = torch.gather(maxima.reshape(b, h * w), 1, flat)
    return xy, flat, valid


def top_k_maxima(scores: torch.Tensor, radius: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` strongest local maxima of each map (:func:`top_k_valid_maxima` without ``valid``).

    Returns:
        ``xy`` ``(B, k, 2)`` int64 pixel coordinates (x, y), strongest first, and
        ``flat`` ``(B, k)`` int64 indices into the flattened ``H * W`` map. When a map has
        fewer than ``k`` maxima the remainder are its strongest non-maxima away from the
        border (not padding).
    """
    xy, flat, _ = top_k_valid_maxima(scores, radius, k)
    return xy, flat

"""Shape-static keypoint selection shared by the detector patches.

Both helpers keep every shape a function of the input shape and K only, so they export to
plain MaxPool / TopK / Gather ONNX ops with no data-dependent dimension.
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
    is_max = scores == pooled
    h, w = scores.shape[-2:]
    ys = torch.arange(h, device=scores.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=scores.device).view(1, 1, 1, w)
    inside = (ys >= radius) & (ys < h - radius) & (xs >= radius) & (xs < w - radius)
    return is_max & inside


def top_k_maxima(scores: torch.Tensor, radius: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` strongest local maxima of each map.

    Args:
        scores: ``(B, 1, H, W)`` score map.
        radius: NMS half window.
        k: keypoint count; must not exceed ``H * W``.

    Returns:
        ``xy`` ``(B, k, 2)`` int64 pixel coordinates (x, y), strongest first, and
        ``flat`` ``(B, k)`` int64 indices into the flattened ``H * W`` map. When a map has
        fewer than ``k`` maxima the remainder are its strongest non-maxima.
    """
    b, _, h, w = scores.shape
    maxima = local_maxima(scores, radius)
    # Non-maxima rank below every maximum but stay ordered among themselves.
    floor = scores.detach().amin(dim=(2, 3), keepdim=True)
    span = scores.detach().amax(dim=(2, 3), keepdim=True) - floor + 1.0
    ranked = torch.where(maxima, scores, scores - span).reshape(b, h * w)
    flat = torch.topk(ranked, k, dim=1, largest=True, sorted=True).indices
    xy = torch.stack([flat % w, torch.div(flat, w, rounding_mode="floor")], dim=-1)
    return xy, flat

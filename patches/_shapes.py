"""Image sizes read at run time, so that exported graphs keep H and W dynamic."""

from __future__ import annotations

import torch


def size_wh(x: torch.Tensor) -> torch.Tensor:
    """(W, H) of ``x`` (..., H, W) as a float tensor of ``x``'s dtype, read from its shape at run time.

    ``torch.tensor([w, h])`` or Python arithmetic such as ``max(h, w)`` on traced sizes would freeze the
    trace's image size into the graph as constants; a Shape op keeps H and W dynamic.
    """
    shape = torch._shape_as_tensor(x)
    return torch.stack([shape[-1], shape[-2]]).to(x.dtype)

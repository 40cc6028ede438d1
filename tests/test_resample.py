"""glueforge.resample: a GridSample over a shape-derived aligned pixel grid becomes a Resize with the same
outputs; a GridSample at data-dependent positions, or over a shape-derived grid that is not a pixel grid, stays.
A Resize that only a channels-last Transpose reads resizes the transposed map instead, to the same values."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glueforge.resample import regular_grid_to_resize, resize_channels_last
from glueforge.stages.simplify import simplify
from glueforge.patches.aliked_upsample_grid import upsample_grid
from tests.project import ort_session


class Upsample(nn.Module):
    """The ALIKED patch's upsampling, by 2 and by 8, after a convolution (as in ALIKED's gates)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return upsample_grid(y, 2) + upsample_grid(F.avg_pool2d(y, 4), 8)


class ChannelsLast(nn.Module):
    """Upsampled maps read channels-last (as ALIKED's descriptor head reads its parts), one of them also as is."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = upsample_grid(x, 2), upsample_grid(x, 8)
        return a.permute(0, 2, 3, 1) * 2, b.permute(0, 2, 3, 1) + b.mean()


class Keypoints(nn.Module):
    """A grid from the data (as the descriptor and score reads at keypoints are)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = torch.tanh(x[:, :2].permute(0, 2, 3, 1))
        return F.grid_sample(x, grid, mode="bilinear", align_corners=True)


class HalfGrid(nn.Module):
    """A grid from the shape alone that is not a pixel grid: the aligned grid scaled by one half (a zoom)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        gy = torch.arange(2 * h).to(x.dtype) / (2 * h - 1) - 0.5
        gx = torch.arange(2 * w).to(x.dtype) / (2 * w - 1) - 0.5
        grid = torch.stack([gx.view(1, -1).expand(2 * h, 2 * w), gy.view(-1, 1).expand(2 * h, 2 * w)], dim=-1)
        return F.grid_sample(x, grid.unsqueeze(0).expand(b, 2 * h, 2 * w, 2), mode="bilinear", align_corners=True)


def exported(module: nn.Module, tmp_path: Path) -> onnx.ModelProto:
    raw, simplified = tmp_path / "raw.onnx", tmp_path / "graph.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(1, 3, 32, 48),), str(raw), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}})
    simplify(raw, simplified)
    return onnx.load(str(simplified))


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:

    return ort_session(model.SerializeToString()).run(None, {"x": x})[0]


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_a_shape_derived_pixel_grid_becomes_a_resize_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    module = Upsample()
    model = exported(module, tmp_path)
    assert ops(model).count("GridSample") == 2 and "Range" in ops(model)
    rewritten, count = regular_grid_to_resize(model)
    assert count == 2
    assert "GridSample" not in ops(rewritten) and "Range" not in ops(rewritten)  # the grids' nodes are gone
    resizes = [n for n in rewritten.graph.node if n.op_type == "Resize"]
    scales = sorted(onnx.numpy_helper.to_array(i).tolist() for i in rewritten.graph.initializer if i.name.endswith("/scales"))
    assert len(resizes) == 2 and scales == [[1, 1, 2, 2], [1, 1, 8, 8]]
    for shape in ((1, 3, 32, 48), (2, 3, 64, 32)):  # the export's size and another: H and W stay dynamic
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        with torch.inference_mode():
            upstream = module.conv(torch.from_numpy(x))  # nn.Upsample, what the patch replaced
            expected = (F.interpolate(upstream, scale_factor=2, mode="bilinear", align_corners=True)
                        + F.interpolate(F.avg_pool2d(upstream, 4), scale_factor=8, mode="bilinear", align_corners=True))
        np.testing.assert_allclose(run(rewritten, x), expected.numpy(), rtol=0, atol=2e-5)


@pytest.mark.parametrize("module", [Keypoints(), HalfGrid()], ids=["data-dependent", "not-a-pixel-grid"])
def test_other_grid_samples_stay(module, tmp_path):
    model = exported(module, tmp_path)
    before = model.SerializeToString()
    rewritten, count = regular_grid_to_resize(model)
    assert count == 0 and rewritten.SerializeToString() == before


def test_a_resize_read_channels_last_resizes_the_transposed_map(tmp_path):
    module = ChannelsLast()
    model, _ = regular_grid_to_resize(exported(module, tmp_path))
    x = np.random.default_rng(2).random((2, 3, 16, 24), dtype=np.float32)
    before = [ort_session(model.SerializeToString()).run(None, {"x": x})]
    rewritten, count = resize_channels_last(model)
    assert count == 1  # the x8 map is also read as is (its mean): it stays
    channels_last = [n for n in rewritten.graph.node if n.op_type == "Resize" and n.input[0].endswith("/input")]
    assert len(channels_last) == 1
    scales = onnx.numpy_helper.to_array(next(i for i in rewritten.graph.initializer if i.name == channels_last[0].input[2]))
    assert scales.tolist() == [1, 2, 2, 1]
    after = ort_session(rewritten.SerializeToString()).run(None, {"x": x})
    for got, expected in zip(after, before[0]):
        np.testing.assert_array_equal(got, expected)

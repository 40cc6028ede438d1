"""The floor of a graph (glueforge.floor): its FLOPs, counted at export, against a hand count; the x floor arithmetic;
and the matrix-multiply product whose rate the runtimes measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glueforge import floor


class _Small(torch.nn.Module):
    """A 3x3 convolution (3 -> 8 channels, same padding), a global pool and a linear layer (8 -> 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.linear = torch.nn.Linear(8, 10, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.relu(self.conv(images)).mean(dim=(2, 3)))


def test_flops_match_a_hand_count():
    images = torch.rand(2, 3, 16, 16)
    # per output element of the convolution, 3 x 3 x 3 multiply-adds; 2 images x 8 channels x 16 x 16 outputs
    conv = 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)
    linear = 2 * (2 * 10) * 8  # 2 images x 10 outputs, 8 multiply-adds each
    assert floor.count(_Small().eval(), (images,)) == conv + linear == 221_504


def test_the_export_records_flops_per_image_or_pair():
    from types import SimpleNamespace

    from glueforge.stages.export import flops

    images = torch.rand(2, 3, 16, 16)  # a trace example is one pair
    settings = SimpleNamespace(image_size=[16, 16], keypoints=32)
    extractor = flops("extractor", _Small().eval(), (images,), settings)
    assert extractor["count"] == 221_504 // 2 and extractor["per"] == "image"
    assert extractor["image_size"] == [16, 16] and extractor["keypoints"] == 32
    assert flops("end2end", _Small().eval(), (images,), settings)["per"] == "pair"


def test_times_floor_is_latency_over_the_arithmetic_at_the_rate():
    # 2 GFLOP at 200 GFLOP/s take 10 ms: a graph at 25 ms is 2.5 x its floor
    assert floor.times_floor(25.0, 2e9, 200.0) == pytest.approx(2.5)
    assert floor.graph_flops({"flops": {"count": 3e9}}, 2) == 6e9
    assert floor.graph_flops({}, 2) is None


def test_the_floor_product_is_a_matmul_of_the_stated_size(tmp_path):
    import onnxruntime as ort

    path = floor.write_matmul(tmp_path)
    inputs = floor.matmul_inputs()
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)
    np.testing.assert_allclose(out, inputs["a"] @ inputs["b"], rtol=1e-3, atol=1e-2)
    rate = floor.measure(lambda: inputs["a"] @ inputs["b"], "numpy", runs=3, warmup=1)
    assert rate["gflops"] > 0 and rate["matmul"] == f"fp32 {floor.N}x{floor.N} @ {floor.N}x{floor.N}"

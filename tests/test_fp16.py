"""FP16 graphs with FP32 islands (glueforge.fp16): a sampling grid made from the image shape stays FP32.

The graph upsamples its input by 2 with a GridSample over an aligned-corners grid built from Range
(ALIKED's ``aliked_upsample_grid``). In FP16 that grid would be up to a quarter pixel off at 640 px;
``to_fp16`` keeps the grid chain in FP32 and removes the FP16 round trips onnxruntime's converter
writes between FP32 nodes, so the FP16 graph's upsampling equals the FP32 one to FP16 rounding of
the values alone.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from glueforge.fp16 import fp32_islands, keypoint_chain, to_fp16
from glueforge.patches.aliked_upsample_grid import upsample_grid
from tests.project import ort_session


class _Upsample(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_grid(x * 1.0, 2)


def _export(path) -> onnx.ModelProto:
    torch.onnx.export(_Upsample(), (torch.rand(1, 2, 240, 320),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {2: "H", 3: "W"}, "y": {2: "H2", 3: "W2"}})
    return onnx.shape_inference.infer_shapes(onnx.load(str(path)))


def test_shape_grid_stays_fp32_without_round_trips(tmp_path):
    model = _export(tmp_path / "up.onnx")
    chain = keypoint_chain(model)
    by_name = {n.name: n for n in model.graph.node}
    assert {"Cast", "Div", "Sub"} <= {by_name[n].op_type for n in chain}  # the grid arithmetic after the Range
    assert not any("x" in by_name[n].input for n in chain)  # x * 1.0 depends on the input's values: FP16
    assert all(by_name[n].op_type != "Shape" for n in fp32_islands(model))  # integer shape ops are not pinned

    fp16 = to_fp16(model)
    producers = {o: n for n in fp16.graph.node for o in n.output}
    for node in fp16.graph.node:  # no Cast(float16) -> Cast(float32) pair is left
        first = producers.get(node.input[0]) if node.op_type == "Cast" else None
        if first is not None and first.op_type == "Cast":
            assert not ({a.i for a in first.attribute} == {onnx.TensorProto.FLOAT16}
                        and {a.i for a in node.attribute} == {onnx.TensorProto.FLOAT}), (first.name, node.name)

    x = np.random.default_rng(0).random((1, 2, 240, 320), dtype=np.float32)
    fp32_out = ort_session(model.SerializeToString()).run(None, {"x": x})[0]
    fp16_out = ort_session(fp16.SerializeToString()).run(None, {"x": x})[0]
    # the values are rounded to FP16 once (<= 2^-11 relative); a grid rounded to FP16 would miss by far more
    assert np.abs(fp16_out - fp32_out).max() < 1e-3

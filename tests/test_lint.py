"""The pre-build lint for TensorRT targets, on small graphs built for each hazard."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from glueforge.lint import LintError, check, lint, main, rules_of


def graph(nodes, inputs, outputs, initializers=(), opsets=(("", 17),)):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def scores_topk(k: int) -> onnx.ModelProto:
    return graph(
        [helper.make_node("TopK", ["scores", "k"], ["values", "indices"], name="/extractor/dkd/TopK")],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 307200])],
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, k]), helper.make_tensor_value_info("indices", TensorProto.INT64, [1, k])],
        [numpy_helper.from_array(np.array([k], dtype=np.int64), "k")],
    )


def test_topk_above_3840_is_an_error_naming_the_node():
    with pytest.raises(LintError) as err:
        check(scores_topk(4096), "end2end", rules_of("tensorrt"))
    assert "node '/extractor/dkd/TopK' (TopK)" in str(err.value) and "4096" in str(err.value) and "3840" in str(err.value)
    assert lint(scores_topk(3840), rules_of("tensorrt")) == []


def test_onnxruntime_only_op_is_an_error_naming_the_node():
    model = graph(
        [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], name="/matcher/attn/MultiHeadAttention",
                          domain="com.microsoft", num_heads=4)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1024, 256]) for n in "qkv"],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 1024, 256])],
        opsets=(("", 17), ("com.microsoft", 1)),
    )
    with pytest.raises(LintError) as err:
        check(model, "matcher", rules_of("tensorrt_rtx"))
    assert "node '/matcher/attn/MultiHeadAttention' (com.microsoft.MultiHeadAttention)" in str(err.value)


def test_nonzero_is_an_error_for_tensorrt_rtx_and_a_warning_for_tensorrt():
    model = graph(
        [helper.make_node("NonZero", ["x"], ["y"], name="/matcher/NonZero")],
        [helper.make_tensor_value_info("x", TensorProto.BOOL, [1, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2, None])],
    )
    assert [f.severity for f in lint(model, rules_of("tensorrt_rtx"))] == ["error"]
    assert [f.severity for f in lint(model, rules_of("tensorrt"))] == ["warning"]


def test_unsupported_op_is_an_error():
    model = graph(
        [helper.make_node("StringNormalizer", ["x"], ["y"], name="strings")],
        [helper.make_tensor_value_info("x", TensorProto.STRING, [3])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [3])],
    )
    assert [str(f) for f in lint(model, rules_of("tensorrt"))] == [
        "error: node 'strings' (StringNormalizer): not supported by TensorRT's ONNX parser (onnx-tensorrt operators.md)"
    ]


def test_data_dependent_shape_tensor_is_a_warning():
    model = graph(
        [
            helper.make_node("ReduceMax", ["x"], ["m"], name="max", keepdims=0),
            helper.make_node("Cast", ["m"], ["n"], name="cast", to=TensorProto.INT64),
            helper.make_node("Reshape", ["x", "n"], ["y"], name="/reshape_by_value"),
            helper.make_node("Shape", ["x"], ["s"], name="shape"),
            helper.make_node("Reshape", ["x", "s"], ["z"], name="/reshape_by_shape"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
    )
    findings = lint(model, rules_of("tensorrt"))
    assert [(f.severity, f.node) for f in findings] == [("warning", "/reshape_by_value")]
    assert "data-dependent shape tensor" in findings[0].message


def test_int64_io_before_tensorrt_10_is_a_warning():
    model = scores_topk(1024)
    assert lint(model, rules_of("tensorrt", "10.3")) == []
    assert [f.node for f in lint(model, rules_of("tensorrt", "8.6"))] == ["indices"]


def test_command_line_exit_code(tmp_path, capsys):
    path = tmp_path / "g.onnx"
    onnx.save(scores_topk(4096), str(path))
    assert main([str(path), "--runtime", "tensorrt"]) == 1
    assert "/extractor/dkd/TopK" in capsys.readouterr().out
    onnx.save(scores_topk(1024), str(path))
    assert main([str(path), "--runtime", "tensorrt"]) == 0

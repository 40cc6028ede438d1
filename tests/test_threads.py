"""$OMP_NUM_THREADS limits the threads of a runtime session whose settings leave them to the library, and
$OMP_WAIT_POLICY=PASSIVE stops its idle threads spinning.

A session whose settings name a thread count keeps it; an invalid value is ignored (the library's default).
A session computes with denormal floats as zero where its settings say so (the default), on the thread that calls it
too, and leaves that thread's floating-point mode as it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from glueforge.machine import flush_denormals, thread_limit
from glueforge.runtimes.onnxruntime import OrtSession, session


@pytest.fixture
def add_one(tmp_path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "add_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    path = tmp_path / "add_one.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.mark.parametrize("value, expected", [("3", 3), ("1", 1), ("0", None), ("-2", None), ("many", None), ("", None)])
def test_thread_limit_reads_a_positive_count(monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert thread_limit() == expected


def test_onnxruntime_session_takes_the_limit_unless_its_settings_name_a_count(monkeypatch, add_one):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    limited = session(add_one, OrtSession())
    assert limited.get_session_options().intra_op_num_threads == 3
    assert np.array_equal(limited.run(None, {"x": np.array([1, 2], np.float32)})[0], [2, 3])
    assert session(add_one, OrtSession(intra_op_num_threads=2)).get_session_options().intra_op_num_threads == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert session(add_one, OrtSession()).get_session_options().intra_op_num_threads == 0  # onnxruntime's default


@pytest.mark.parametrize("policy, spinning", [("PASSIVE", "0"), ("passive", "0"), ("ACTIVE", None), (None, None)])
def test_a_passive_wait_policy_stops_onnxruntime_spinning(monkeypatch, add_one, policy, spinning):
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    options = session(add_one, OrtSession()).get_session_options()
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert (options.get_session_config_entry(key) if spinning else None) == spinning
        if spinning is None:
            with pytest.raises(Exception):  # not set: onnxruntime's default (spinning)
                options.get_session_config_entry(key)


def test_denormals_are_zero_in_a_flushing_session_and_only_there(tmp_path):
    tiny = np.float32(1e-20)  # its square, 1e-40, is a denormal float
    assert tiny * tiny > 0
    with flush_denormals():
        assert tiny * tiny == 0
    assert tiny * tiny > 0  # the thread's mode is restored

    graph = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"])], "square",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    path = tmp_path / "square.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    x = np.full(4, tiny, np.float32)
    flushed = session(path, OrtSession()).run(None, {"x": x})[0]
    kept = session(path, OrtSession(flush_denormals=False)).run(None, {"x": x})[0]
    assert (flushed == 0).all() and (kept > 0).all()
    assert tiny * tiny > 0

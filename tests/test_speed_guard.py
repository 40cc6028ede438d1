"""The speed guard: the cpu bundles' graphs, timed next to the matrix-multiply rate of the same run, stay within a
margin of their checked-in "x floor" (tests/speed_baseline.json).

x floor is a ratio of two figures measured back to back in one process on one core (the graph's median latency over
the time its FLOPs take at the rate of an fp32 matrix product, glueforge.floor), so a slower or busier machine moves
both; a graph that became slower moves only the first. The margin is what this ratio was measured to vary by across
runs of the suite (the build chains and the other worker busy beside it), with room: see MARGIN. Updating the
baseline is a deliberate commit that says why: ``GLUEFORGE_WRITE_SPEED_BASELINE=1 pytest tests/test_speed_guard.py``
rewrites it from this machine's measurement.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import glueforge
from glueforge import floor
from glueforge.api import Bundle
from glueforge.bench import Budget, bench, floor_rate
from tests.project import REPO, VERSIONS

log = logging.getLogger(__name__)
BASELINE = REPO / "tests" / "speed_baseline.json"
# (model, graph) of the cpu bundles the guard times: every family's extractor and both matcher kinds
CASES = (("aliked_lightglue", "extractor"), ("aliked_lightglue", "matcher"), ("disk_lightglue", "extractor"),
         ("xfeat_lighterglue", "extractor"), ("xfeat_lighterglue", "matcher"))
BUDGET = Budget(warmup=1, runs=5)
# a case fails above MARGIN x its baseline. The runs the baseline's note lists varied by less than 1.2 x alone; beside
# the suite's build chains, which share the two cores, a burst of their load moved aliked's matcher to 1.6 x (CI31: the
# floor's rate at 53-96 GFLOP/s, 109 alone) and xfeat's extractor, memory-bound where the floor's product is not, to
# 1.71 x after two retries (CI34: 3.94 against 2.31, and 1.47 in the same run's next test). 2 x: above both. The price:
# under the suite's load it cannot tell a 1.55 x regression (issue 18's dynamic shapes cost ALIKED's extractor that)
# from noise; it catches a graph twice as slow, and `glueforge bench` beside a baseline bundle measures the rest
MARGIN = 2.0
# times a case above the margin is measured again, keeping its best: a burst of load passes one attempt
RETRIES = 2
pytestmark = pytest.mark.xdist_group("speed")  # one worker, in file order: the slowed graph's test reads the baseline


def measure(bundle: Bundle, graph: str) -> float:
    """x floor of one graph at batch 1 on the bundle's sample, on one thread, next to the rate of the same run."""
    rate = floor_rate(bundle)
    (row,) = bench(bundle, [graph], (1,), BUDGET, rate=rate)
    assert row.x_floor is not None, f"{bundle}: {graph} has no FLOP count at {row.size}"
    return row.x_floor


def slower(measured: dict[str, float], baseline: dict[str, float], margin: float = MARGIN) -> list[str]:
    """The cases whose x floor is above ``margin`` x their baseline's, as lines a developer can act on."""
    return [f"{case}: x floor {value:.2f} > {margin:g} x the baseline's {baseline[case]:.2f}"
            for case, value in measured.items() if value > margin * baseline[case]]


@pytest.fixture()
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the sessions and the floor's product: one core each


def _bundle(project: Path, model: str) -> Path:
    return project / "artifacts/store" / model / VERSIONS[model] / "cpu"


def test_cpu_bundles_stay_within_the_margin_of_their_baseline(built, one_thread):
    measured = {}
    for model, graph in CASES:
        with glueforge.open(_bundle(built, model)) as bundle:
            measured[f"{model}/{graph}"] = measure(bundle, graph)
    log.info("x floor, one thread: %s", json.dumps(measured))
    if os.environ.get("GLUEFORGE_WRITE_SPEED_BASELINE"):
        BASELINE.write_text(json.dumps({"threads": 1, "budget": {"warmup": BUDGET.warmup, "runs": BUDGET.runs},
                                        "x_floor": measured}, indent=1) + "\n")
    baseline = json.loads(BASELINE.read_text())
    assert set(baseline["x_floor"]) == set(measured), "tests/speed_baseline.json lists other cases: rewrite it"
    # a case above the margin is timed again and keeps its best: a burst of load on the shared cores passes one attempt,
    # a slower graph fails every one
    for _ in range(RETRIES):
        over = [case for case, value in measured.items() if value > MARGIN * baseline["x_floor"][case]]
        for case in over:
            model, graph = case.split("/")
            with glueforge.open(_bundle(built, model)) as bundle:
                measured[case] = min(measured[case], measure(bundle, graph))
        if over:
            log.info("x floor, one thread, after timing %s again: %s", over, json.dumps(measured))
    failures = slower(measured, baseline["x_floor"])
    assert not failures, "slower than the checked-in baseline:\n" + "\n".join(failures)


def _slowed(source: Path, dest: Path, graph: str, products: int) -> Bundle:
    """A copy of the bundle whose ``graph`` also runs ``products`` fp32 N x N matrix products that depend on its input
    and change no output (their sum times 0 is added to the first output)."""
    shutil.copytree(source, dest)
    path = dest / f"{graph}.onnx"
    model = onnx.load(str(path))
    g = model.graph
    first = g.output[0].name
    for node in g.node:  # the graph's own nodes now write (and read) the output under another name
        node.output[:] = [f"{first}/unslowed" if o == first else o for o in node.output]
        node.input[:] = [f"{first}/unslowed" if i == first else i for i in node.input]
    square = np.random.default_rng(0).standard_normal((floor.N, floor.N)).astype(np.float32) / floor.N
    g.initializer.extend([numpy_helper.from_array(square, "slow/square"), numpy_helper.from_array(np.float32(0), "slow/zero")])
    nodes = [helper.make_node("ReduceMean", [g.input[0].name], ["slow/mean"], keepdims=0),
             helper.make_node("Mul", ["slow/square", "slow/mean"], ["slow/0"])]
    nodes += [helper.make_node("MatMul", [f"slow/{i}", "slow/square"], [f"slow/{i + 1}"]) for i in range(products)]
    nodes += [helper.make_node("ReduceSum", [f"slow/{products}"], ["slow/sum"], keepdims=0),
              helper.make_node("Mul", ["slow/sum", "slow/zero"], ["slow/nothing"]),
              helper.make_node("CastLike", ["slow/nothing", f"{first}/unslowed"], ["slow/like"]),
              helper.make_node("Add", [f"{first}/unslowed", "slow/like"], [first])]
    g.node.extend(nodes)
    onnx.save(model, str(path))
    manifest = json.loads((dest / "manifest.json").read_text())
    return Bundle(dest, manifest)  # the bytes no longer match the manifest's digests: opened without verifying


def test_the_guard_fails_on_a_deliberately_slowed_graph(built, one_thread, tmp_path):
    """The extractor of xfeat_lighterglue, made slower by matrix products worth twice the margin over its baseline: the
    guard names it, and passes the same graph unslowed."""
    model, graph = "xfeat_lighterglue", "extractor"
    case = f"{model}/{graph}"
    baseline = json.loads(BASELINE.read_text())["x_floor"]
    with glueforge.open(_bundle(built, model)) as bundle:
        rate = floor_rate(bundle)
        before = measure(bundle, graph)
        flops = floor.graph_flops(bundle.manifest["graphs"][graph], 1)
    assert not slower({case: before}, baseline), (before, baseline[case])
    # matrix products worth twice the margin over the baseline, and at least the graph's own measured time: in x floor
    # units a product adds 2 N^3 / the graph's FLOPs (sized from the baseline, not from this run's measurement alone,
    # which load can put below it: CI34 measured 1.47 against 2.31, and twice that stayed under the margin)
    extra = max(2 * MARGIN * baseline[case] - before, before)
    products = math.ceil(extra * flops / (2 * floor.N**3))
    with _slowed(_bundle(built, model), tmp_path / "slowed", graph, products) as bundle:
        after = measure(bundle, graph)
    log.info("%s: x floor %.2f, slowed with %d products %.2f (rate %.1f GFLOP/s)", case, before, products, after, rate["gflops"])
    assert after > before + 0.8 * extra  # the products ran, taking most of the time they cost
    assert slower({case: after}, baseline) == [f"{case}: x floor {after:.2f} > {MARGIN:g} x the baseline's {baseline[case]:.2f}"]

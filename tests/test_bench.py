"""``glueforge bench`` and the benchmarks every manifest records.

Timing figures themselves are not asserted (speed claims live in the benchmark scripts and the
issue notes): these tests check the table and JSON a user gets, the tracking loop's rows, the
stopping rules, and that the manifests hold figures or, where the build machine cannot run the
engine, the reason and the device command.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from glueforge.bench import Budget, time_runs
from tests.project import MODELS, SHARED_DATA, VERSIONS

BUNDLE = "xfeat_lighterglue"


def _glueforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glueforge.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_bench_prints_a_row_per_graph_and_batch(built_for, target, tmp_path):
    bundle = built_for / "artifacts/store" / BUNDLE / VERSIONS[BUNDLE] / target
    out = tmp_path / "bench.json"
    proc = _glueforge("bench", str(bundle), "--batch", "1,2", "--warmup", "1", "--runs", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{BUNDLE} {VERSIONS[BUNDLE]} on {target} (")
    assert lines[1].split()[:6] == ["graph", "batch", "unit", "image", "WxH", "runs"]
    record = json.loads(out.read_text())
    rows = {(r["graph"], r["batch"]): r for r in record["rows"]}
    assert set(rows) == {(g, b) for g in ("end2end", "extractor", "matcher") for b in (1, 2)}
    for (graph, batch), r in rows.items():
        assert r["runs"] == 3 and r["stopped"].startswith("3 runs")
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["peak_rss_mib"] > 50
        assert r["unit"] == ("images" if graph == "extractor" else "pairs") and r["device_mib"] is None
        assert r["size"] == ("K=1024" if graph == "matcher" else "640x480")  # the sample pair, as the engine takes it
        assert r["per_second"] == pytest.approx(batch * 1000 / r["p50_ms"], rel=1e-3)
        # the floor: the graph's FLOPs (counted at export, at this size) over the matrix-multiply rate of this run
        assert r["gflop"] > 0 and r["x_floor"] > 0, r  # under the suite's load the rate and p50 move apart (0.84 seen)
        assert r["x_floor"] == pytest.approx(r["p50_ms"] / (r["gflop"] / record["floor"]["gflops"] * 1000), rel=0.02)
    assert rows[("extractor", 2)]["gflop"] == pytest.approx(2 * rows[("extractor", 1)]["gflop"], rel=0.01)
    assert record["floor"]["gflops"] > 1 and record["floor"]["matmul"] == "fp32 1024x1024 @ 1024x1024"
    assert "x floor" in lines[1] and any(line.startswith("x floor: p50 over the graph's FLOPs at ") for line in lines)
    assert record["machine"]["cores"] >= 1 and record["runtime"] == ("onnxruntime" if target == "cpu" else "openvino")


def test_bench_sequence_times_the_tracking_loop_next_to_the_pair_graph(built):
    bundle = built / "artifacts/store" / BUNDLE / VERSIONS[BUNDLE] / "cpu"
    proc = _glueforge("bench", str(bundle), "--graphs", "end2end", "--runs", "4", "--warmup", "1",
                      "--sequence", str(SHARED_DATA / "sequences/kitti"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["graph"]: r for r in json.loads(proc.stdout)["rows"]}
    assert set(rows) == {"end2end", "tracking: extract 1 + match 1", "  of which extract", "  of which match",
                         "pair: match_pair"}
    loop = rows["tracking: extract 1 + match 1"]
    assert loop["unit"] == "frames" and loop["runs"] == 4 and loop["size"] == "1248x384"  # KITTI, padded to 32
    parts = rows["  of which extract"]["p50_ms"] + rows["  of which match"]["p50_ms"]
    assert parts == pytest.approx(loop["p50_ms"], rel=0.5)


def test_bench_refuses_a_graph_the_bundle_lacks(built):
    bundle = built / "artifacts/store" / "aliked_t16" / VERSIONS["aliked_t16"] / "cpu"
    proc = _glueforge("bench", str(bundle), "--graphs", "matcher", "--runs", "1")
    assert proc.returncode == 2 and "has no graph matcher; its graphs: extractor" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_manifests_hold_the_build_machines_benchmark(built_for, target):
    for model in MODELS:
        manifest = json.loads((built_for / "artifacts/store" / model / VERSIONS[model] / target / "manifest.json").read_text())
        bench = manifest["benchmarks"]
        assert bench["status"] == "measured" and bench["machine"]["processor"], model
        assert {r["graph"] for r in bench["rows"]} == set(manifest["graphs"]), model
        assert all(r["p50_ms"] > 0 for r in bench["rows"])
        assert bench["floor"]["gflops"] > 1, model
        for r in bench["rows"]:
            # x floor: the row's p50 over its FLOPs' time at the rate measured in the same run. Not held above 1 here:
            # the build runs beside the suite's other builds, so rate and latency are measured under different loads
            # (a DISK build measured 85 GFLOP/s, a quarter of this machine's rate); the speed guard measures both alone
            expected = r["p50_ms"] / (r["gflop"] / bench["floor"]["gflops"] * 1000)
            assert r["x_floor"] == pytest.approx(expected, rel=0.02, abs=0.01) and r["x_floor"] > 0, (model, r["graph"])
        for graph, spec in manifest["graphs"].items():  # counted at export, per image or pair, at the trace size
            flops = spec["flops"]
            assert flops["count"] > 1e8 and flops["per"] == ("image" if graph == "extractor" else "pair"), (model, graph)
            assert flops["image_size"] == [480, 640] and flops["keypoints"] == manifest["keypoints"]
        assert bench["command"].startswith("glueforge bench <bundle directory>")


def test_time_runs_stops_when_stable_or_at_the_budget():
    latencies, stopped = time_runs(lambda: None, Budget(warmup=0, seconds=30, min_runs=10, tolerance=10.0))
    assert stopped == "stable" and len(latencies) == 20  # the median of 20 is within 1000% of that of 10
    latencies, stopped = time_runs(lambda: None, Budget(warmup=2, runs=7))
    assert stopped == "7 runs" and len(latencies) == 7
    import time

    # a graph slower than the budget still gets min_runs runs: p50, p90 and p99 come from 10 runs, never from one
    latencies, stopped = time_runs(lambda: time.sleep(0.02), Budget(warmup=0, seconds=0.05, tolerance=0.0))
    assert stopped == "time budget (not stable)" and len(latencies) == 10

"""validate: run an engine on the validation inputs and judge it against the target's thresholds.

Two checks, both of which must pass:

1. Per-output error statistics against the golden outputs of the patched PyTorch model,
   computed by polygraphy's comparator (``CompareFunc.simple``) with the tolerances and
   error statistic of models.yaml. Outputs with a data-dependent dimension (the match list)
   cannot be compared element by element and are judged by (2).
2. Task metrics against kornia's unpatched reference: keypoints with a mutual nearest
   neighbour within 1 px, descriptor cosine on those keypoints, and the share of reference
   matches reproduced.
"""

from __future__ import annotations

import logging
import platform
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from glueforge import GlueforgeError
from glueforge.config import Target
from validation.metrics import pair_metrics

log = logging.getLogger(__name__)


class ValidationFailed(GlueforgeError):
    """An engine's outputs are outside the target's tolerances."""


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _split(flat: Mapping[str, np.ndarray], graph: str) -> dict[str, np.ndarray]:
    prefix = f"{graph}/"
    return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


def run_graph(make_session: Callable[[], Any], feed: dict[str, np.ndarray], name: str):
    """Run one engine through polygraphy; returns its polygraphy ``RunResults``."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator

    return Comparator.run([OnnxrtRunner(make_session, name=name)], data_loader=[feed])


def compare_outputs(golden: dict[str, np.ndarray], engine_results, target: Target) -> dict[str, Any]:
    """polygraphy comparison of the static-shaped outputs that have a tolerance."""
    from polygraphy.comparator import CompareFunc, Comparator, IterationResult, RunResults

    runner, iterations = engine_results[0]
    produced = iterations[0]
    names = [n for n in golden if n in target.tolerances and n in produced and golden[n].shape == produced[n].shape]
    if not names:
        return {}
    reference = RunResults([("pytorch-golden", [IterationResult(OrderedDict((n, golden[n]) for n in names), runner_name="pytorch-golden")])])
    reference.append((runner, [IterationResult(OrderedDict((n, produced[n]) for n in names), runner_name=runner)]))
    compare = CompareFunc.simple(
        atol={n: target.tolerances[n].atol for n in names},
        rtol={n: target.tolerances[n].rtol for n in names},
        check_error_stat={n: target.tolerances[n].stat for n in names},
    )
    accuracy = Comparator.compare_accuracy(reference, compare_func=compare)
    if not hasattr(accuracy, "values"):  # newer polygraphy: an AccuracyResults list, one per compare function
        accuracy = accuracy[0]
    report = {}
    for per_iteration in accuracy.values():
        for name, result in per_iteration[0].items():
            tol = target.tolerances[name]
            report[name] = {
                "passed": bool(result),
                "stat": tol.stat,
                "atol": tol.atol,
                "rtol": tol.rtol,
                "max_absdiff": float(result.max_absdiff),
                "mean_absdiff": float(result.mean_absdiff),
                "median_absdiff": float(result.median_absdiff),
            }
    return report


def _features(outputs: dict[str, np.ndarray], image: int) -> dict[str, np.ndarray]:
    feature = {"keypoints": outputs["keypoints"][image]}
    if "descriptors" in outputs and outputs["descriptors"].ndim == 3:
        feature["descriptors"] = outputs["descriptors"][image]
    return feature


def _pair_matches(matches: np.ndarray, pair: int) -> np.ndarray:
    return matches[matches[:, 0] == pair][:, 1:]


def task_metrics(
    graph: str, outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> dict[str, float]:
    """Worst task metrics over the validation pairs of one graph against kornia."""
    features = {**inputs, **outputs}  # the matcher graph takes its keypoints as an input
    n_images = features["keypoints"].shape[0]
    per_pair = []
    for pair in range(n_images // 2):
        ref = tuple(
            {k.split("/")[-1]: v for k, v in reference.items() if k.startswith(f"features/{i}/")} for i in (2 * pair, 2 * pair + 1)
        )
        if graph == "extractor":
            ref_matches = cand_matches = np.zeros((0, 2), dtype=np.int64)
        else:
            ref_matches = reference[f"pairs/{pair}/matches"]
            cand_matches = _pair_matches(features["matches"], pair)
        per_pair.append(
            pair_metrics((ref[0], ref[1], ref_matches), (_features(features, 2 * pair), _features(features, 2 * pair + 1), cand_matches))
        )
    worst = {k: min(p[k] for p in per_pair) for k in per_pair[0] if k not in ("matches", "reference_matches")}
    if graph == "extractor":
        worst.pop("match_recall")
    worst["matches"] = float(sum(p["matches"] for p in per_pair))
    worst["reference_matches"] = float(sum(p["reference_matches"] for p in per_pair))
    return worst


def judge(metrics: dict[str, float], target: Target) -> dict[str, bool]:
    t = target.thresholds
    checks = {"keypoint_mnn": metrics["keypoint_mnn"] >= t.keypoint_mnn}
    if "descriptor_cosine_min" in metrics:
        checks["descriptor_cosine"] = metrics["descriptor_cosine_min"] >= t.descriptor_cosine
    if "match_recall" in metrics:
        checks["match_recall"] = metrics["match_recall"] >= t.match_recall
    return checks


def validate(
    engines: Mapping[str, Callable[[], Any]], export_dir: Path, target_name: str, target: Target
) -> dict[str, Any]:
    """Validate every graph; ``engines`` maps a graph name to a zero-argument session factory."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    inputs, golden, reference = (_npz(export_dir / f"{n}.npz") for n in ("inputs", "golden", "reference"))
    graphs: dict[str, Any] = {}
    for graph, make_session in engines.items():
        feed = _split(inputs, graph)
        results = run_graph(make_session, feed, f"{target_name}:{graph}")
        produced = dict(results[0][1][0])
        comparison = compare_outputs(_split(golden, graph), results, target)
        metrics = task_metrics(graph, produced, feed, reference)
        checks = judge(metrics, target)
        passed = all(c["passed"] for c in comparison.values()) and all(checks.values())
        graphs[graph] = {"passed": passed, "outputs": comparison, "metrics": metrics, "checks": checks}
        log.info("validate %s: %s %s", graph, "passed" if passed else "FAILED", {k: round(v, 5) for k, v in metrics.items()})
    report = {
        "passed": all(g["passed"] for g in graphs.values()),
        "target": target_name,
        "golden": "patched PyTorch model (the exported code), same inputs",
        "reference": "kornia (unpatched upstream model), same weights and keypoint count",
        "thresholds": target.thresholds.model_dump(),
        "measured_on": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                        "system": platform.system(), "python": platform.python_version()},
        "graphs": graphs,
    }
    return report

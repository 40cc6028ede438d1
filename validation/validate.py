"""validate: run an engine on the validation inputs and judge it against the target's thresholds.

Two checks, both of which must pass:

1. Per-output error statistics against the golden outputs of the patched PyTorch model,
   computed by polygraphy's comparator (``CompareFunc.simple``) with the tolerances and
   error statistic of models.yaml. Outputs with a data-dependent dimension (the match list)
   cannot be compared element by element and are judged by (2).
   Keypoint-indexed outputs are first put in the same keypoint order (mutual nearest
   neighbours within 1 px), because top-K order is not stable under changed arithmetic.
2. Task metrics against kornia's unpatched reference: keypoints with a mutual nearest
   neighbour within 1 px (worst image), mean descriptor cosine on those keypoints (the
   minimum is reported too), and the share of reference matches reproduced (worst pair).
   The step graphs of adaptive depth (``glueforge.depth``) have no reference of their own
   (upstream has no per-layer model): a layer's ``next_states`` and ``confidences`` are held to the
   golden outputs by (1), which needs their tolerances, and must take the golden outputs'
   decision to stop on every pair; an exit's matches must agree with the golden exit's, both
   ways, as the target's ``match_recall`` says (``match_agreement``).
"""

from __future__ import annotations

import logging
import platform
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from glueforge import GlueforgeError
from glueforge.depth import ExitRule, parse_step
from glueforge.progress import progress
from glueforge.schema import TargetSpec as Target
from glueforge.validation.metrics import matches_of_pair, mutual_nearest, pair_metrics

log = logging.getLogger(__name__)


class ValidationFailed(GlueforgeError):
    """An engine's outputs are outside the target's tolerances."""


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _split(flat: Mapping[str, np.ndarray], graph: str) -> dict[str, np.ndarray]:
    prefix = f"{graph}/"
    return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


def list_form(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs in the dense match form (``matches0`` (B, K), -1 for none; ``mscores0`` (B, K)) with the list form
    added (``matches`` (M, 3): pair, index in image 0, index in image 1; ``mscores`` (M,)), in the order in which
    the graphs' own conversion (``glueforge.graphs.dense_to_matches``) lists them."""
    if "matches0" not in outputs:
        return outputs
    matches0, mscores0 = outputs["matches0"], outputs["mscores0"]
    pair, index0 = np.nonzero(matches0 > -1)
    matches = np.stack([pair, index0, matches0[pair, index0]], axis=1).astype(np.int64)
    return {**outputs, "matches": matches, "mscores": mscores0[pair, index0]}


def run_graph(make_runner: Callable[[str], Any], feeds: list[dict[str, np.ndarray]], name: str) -> list[Any]:
    """Run one engine through polygraphy on each feed, activated once (one session or compilation for every
    size); returns one polygraphy ``RunResults`` per feed."""
    from polygraphy.comparator import Comparator, RunResults

    runner, iterations = Comparator.run([make_runner(name)], data_loader=feeds)[0]
    return [RunResults([(runner, [iteration])]) for iteration in iterations]


def align_keypoints(golden: dict[str, np.ndarray], produced: dict[str, np.ndarray], radius: float = 1.0):
    """Put both sides' keypoint-indexed outputs in the same keypoint order.

    Top-K keypoints come sorted by score, and near-equal scores swap places under any change
    of arithmetic (FP16 most of all), so element i of one side need not be keypoint i of the
    other. Keypoints with a mutual nearest neighbour within ``radius`` px are paired and their
    rows gathered; the share left unpaired is the ``keypoint_mnn`` metric's business.
    Per-image outputs are (N, K, ...); per-pair outputs indexed by image 0's keypoints, such
    as ``mscores0``, are (N/2, K, ...) and follow the first image of each pair.
    """
    g, p = golden["keypoints"], produced["keypoints"]
    images, k = g.shape[:2]
    pairs = [(np.nonzero(c >= 0)[0], c[c >= 0]) for c in (mutual_nearest(g[i], p[i], radius) for i in range(images))]
    rows = {(images, k): pairs, (images // 2, k): pairs[0::2]}
    aligned_g, aligned_p = {}, {}
    for n in golden:
        order = rows.get(golden[n].shape[:2]) if n in produced and golden[n].shape[:2] == produced[n].shape[:2] else None
        if order is not None:
            aligned_g[n] = np.concatenate([golden[n][i][gi] for i, (gi, _) in enumerate(order)])
            aligned_p[n] = np.concatenate([produced[n][i][pi] for i, (_, pi) in enumerate(order)])
    return {**golden, **aligned_g}, {**produced, **aligned_p}


def compare_outputs(golden: dict[str, np.ndarray], engine_results, target: Target, feed: dict[str, np.ndarray]) -> dict[str, Any]:
    """polygraphy comparison of the static-shaped outputs that have a tolerance."""
    from polygraphy.comparator import CompareFunc, Comparator, IterationResult, RunResults

    runner, iterations = engine_results[0]
    produced = dict(iterations[0])
    if "keypoints" in golden and "keypoints" in produced and "keypoints" not in feed:
        golden, produced = align_keypoints(golden, produced)
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
        if graph == "extractor" or f"pairs/{pair}/matches" not in reference:
            ref_matches = cand_matches = np.zeros((0, 2), dtype=np.int64)
        else:
            ref_matches = reference[f"pairs/{pair}/matches"]
            cand_matches = matches_of_pair(features, pair)
        per_pair.append(
            pair_metrics((ref[0], ref[1], ref_matches), (_features(features, 2 * pair), _features(features, 2 * pair + 1), cand_matches))
        )
    result = {k: min(p[k] for p in per_pair) for k in per_pair[0] if k not in ("matches", "reference_matches")}
    if graph == "extractor":
        result.pop("match_recall")
        return result
    result["matches"] = float(sum(p["matches"] for p in per_pair))
    result["reference_matches"] = float(sum(p["reference_matches"] for p in per_pair))
    return result


def judge(metrics: dict[str, float], target: Target) -> dict[str, bool]:
    t = target.thresholds
    checks = {"keypoint_mnn": metrics["keypoint_mnn"] >= t.keypoint_mnn}
    if "descriptor_cosine_mean" in metrics:
        checks["descriptor_cosine"] = metrics["descriptor_cosine_mean"] >= t.descriptor_cosine
    if "match_recall" in metrics:
        checks["match_recall"] = metrics["match_recall"] >= t.match_recall
    return checks


def step_metrics(step: tuple[str, int], produced: dict[str, np.ndarray], golden: dict[str, np.ndarray],
                 feed: dict[str, np.ndarray], rule: ExitRule | None) -> tuple[dict[str, float], dict[str, bool]]:
    """Metrics and checks of a step graph (adaptive depth) against its golden outputs.

    An exit: per pair, the share of the golden exit's matches it reproduces and of its matches the golden exit has
    (``match_agreement``, the worst of both over the pairs; it must reach ``match_recall``). A layer with a confidence
    head: per pair, the share of real keypoints confident by the exit rule in its output and in the golden one, which
    must lead to the same decision to stop (``stop_decisions_agree``), since the medians of ``next_states`` and
    ``confidences`` cannot see a few points that cross a threshold."""
    kind, index = step
    if kind == "exit":
        expected = list_form(golden)["matches"]
        found = list_form(produced)["matches"] if "matches0" in produced else np.asarray(produced["matches"])
        shares = []
        for pair in range(feed["keypoints"].shape[0] // 2):
            e = {tuple(m) for m in expected[expected[:, 0] == pair].tolist()}
            f = {tuple(m) for m in found[found[:, 0] == pair].tolist()}
            shares += [len(e & f) / len(e) if e else float(not f), len(e & f) / len(f) if f else float(not e)]
        return {"match_agreement": min(shares)}, {}
    if rule is None or "confidences" not in produced or index >= rule.layers - 1:
        return {}, {}
    real = np.asarray(feed["keypoints"])[..., 0] >= 0
    ours, theirs = (rule.confident(outputs["confidences"], real, index) for outputs in (produced, golden))
    agree = bool((rule.may_stop(ours) == rule.may_stop(theirs)).all())
    return ({"confident_share_diff": float(np.abs(ours - theirs).max()), "stop_decisions_agree": float(agree)},
            {"stop_decisions_agree": agree})


def cases(flat: Mapping[str, np.ndarray], graph: str) -> list[str]:
    """The validated image sizes of ``graph`` in an export's npz (keys ``<graph>@<H>x<W>/<tensor>``), in order."""
    return list(dict.fromkeys(k.split("/")[0].split("@")[1] for k in flat if k.startswith(f"{graph}@")))


def target_cases(flat: Mapping[str, np.ndarray], graph: str, target: Target) -> list[str]:
    """The recorded sizes of ``graph`` that ``target`` runs: all of them, or a static target's one size."""
    static = target.static_image_size
    return [size for size in cases(flat, graph) if static is None or size == f"{static[0]}x{static[1]}"]


def worst(per_size: Mapping[str, dict[str, Any]]) -> dict[str, float]:
    """The worst of each metric over the validated sizes (counts are summed)."""
    metrics = [r["metrics"] for r in per_size.values()]
    if not metrics[0]:
        return {}
    return {k: (sum(m[k] for m in metrics) if k in ("matches", "reference_matches")
                else max(m[k] for m in metrics) if k.endswith("_diff") else min(m[k] for m in metrics))
            for k in metrics[0]}


def validate(
    engines: Mapping[str, Callable[[str], Any]],
    reference_dir: Path,
    target_name: str,
    target: Target,
    decode: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    exit_rule: ExitRule | None = None,
) -> dict[str, Any]:
    """Validate every graph at every recorded image size.

    ``engines`` maps a graph name to a polygraphy runner factory (``name -> runner``, a runtime
    module's ``runner``); ``decode``, for a dense extractor, turns the extractor graph's maps into
    padded keypoints, scores and descriptors on the host (the family's ``decode``) before the task metrics;
    ``exit_rule``, for an adaptive-depth matcher, judges its layers' stop decisions (:func:`step_metrics`).
    """
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    inputs, golden, reference = (_npz(reference_dir / f"{n}.npz") for n in ("inputs", "golden", "reference"))
    graphs: dict[str, Any] = {}
    total = sum(len(target_cases(inputs, graph, target)) for graph in engines)
    with progress(f"validate on {target_name}", total=total, unit="case") as bar:
        for graph, make_runner in engines.items():
            per_size: dict[str, Any] = {}
            sizes = target_cases(inputs, graph, target)
            if not sizes:
                raise ValidationFailed(f"{target_name}: {graph} has no validation case at the target's size "
                                       f"{target.static_image_size} (recorded: {', '.join(cases(inputs, graph))})")
            feeds = [_split(inputs, f"{graph}@{size}") for size in sizes]
            for size, feed, results in zip(sizes, feeds, run_graph(make_runner, feeds, f"{target_name}:{graph}")):
                produced = dict(results[0][1][0])
                expected = _split(golden, f"{graph}@{size}")
                if "matches" in produced:  # a graph with the list match form: the golden outputs are dense
                    expected = list_form(expected)
                comparison = compare_outputs(expected, results, target, feed)
                step = parse_step(graph)
                if step is None:
                    if decode is not None and graph == "extractor":
                        produced = decode(produced)
                    metrics = task_metrics(graph, produced, feed, _split(reference, size))
                    checks = judge(metrics, target)
                else:
                    untolerated = [n for n in ("next_states", "confidences") if n in produced and n not in comparison]
                    if untolerated:
                        raise ValidationFailed(f"{target_name}: tolerances lacks {', '.join(untolerated)}, which the "
                                               f"adaptive-depth graph {graph} returns; add them to the target")
                    metrics, checks = step_metrics(step, produced, _split(golden, f"{graph}@{size}"), feed, exit_rule)
                    if "match_agreement" in metrics:
                        checks["match_agreement"] = metrics["match_agreement"] >= target.thresholds.match_recall
                passed = all(c["passed"] for c in comparison.values()) and all(checks.values())
                per_size[size] = {"passed": passed, "outputs": comparison, "metrics": metrics, "checks": checks}
                log.info("validate %s at %s: %s %s", graph, size, "passed" if passed else "FAILED",
                         {k: round(v, 5) for k, v in metrics.items()})
                bar.update(1)
            graphs[graph] = {"passed": all(r["passed"] for r in per_size.values()), "metrics": worst(per_size),
                             "sizes": per_size}
            skipped = [s for s in cases(inputs, graph) if s not in per_size]
            if skipped:  # a static target's graph runs its one size
                graphs[graph]["not_run"] = skipped
    report = {
        "passed": all(g["passed"] for g in graphs.values()),
        "target": target_name,
        "golden": "patched PyTorch model (the exported code), same inputs",
        "reference": "the unpatched upstream model, same weights and keypoint count",
        "thresholds": target.thresholds.model_dump(),
        "measured_on": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                        "system": platform.system(), "python": platform.python_version()},
        "graphs": graphs,
    }
    return report


def adaptive_depth(bundle: Any, reference_dir: Path) -> dict[str, Any]:
    """Adaptive against fixed depth through the runtime API ``bundle`` on each validation pair (the ``matcher`` graph's
    recorded inputs): the layers the exit rule let run and the share of the fixed-depth matches reproduced. Recorded
    for the report; the accuracy gate of the adaptive policy is the homography gate, which matches through it."""
    from glueforge.api import pair_matches, run_layers

    inputs = _npz(reference_dir / "inputs.npz")
    pairs = []
    for size in cases(inputs, "matcher"):
        feed = _split(inputs, f"matcher@{size}")
        for pair in range(feed["keypoints"].shape[0] // 2):
            one = {name: value[2 * pair: 2 * pair + 2] for name, value in feed.items()}
            fixed = {tuple(m) for m in pair_matches(bundle.run("matcher", one), 0)[0].tolist()}
            outcome = run_layers(bundle.exit_rule, bundle.run, one)
            adaptive = {tuple(m) for m in pair_matches(outcome.outputs, 0)[0].tolist()}
            pairs.append({"size": size, "pair": pair, "layers": outcome.layers, "fixed_matches": len(fixed),
                          "reproduced": len(fixed & adaptive) / len(fixed) if fixed else 1.0})
            log.info("adaptive depth at %s, pair %d: %d of %d layers, %.3f of %d fixed-depth matches reproduced", size,
                     pair, outcome.layers, bundle.exit_rule.layers, pairs[-1]["reproduced"], len(fixed))
    return {"rule": bundle.exit_rule.as_dict(), "pairs": pairs}


def homography(bundle: Any, reference_dir: Path, target: Target) -> dict[str, Any]:
    """The homography gate (``glueforge.homography``): the engine, run through the runtime API ``bundle``, on the
    reference step's warps, against the upstream model's matches on the same warps (``homography.npz``). It passes when
    the engine's AUC@3px is at least the reference's minus the target's ``homography_auc_margin``."""
    from glueforge.homography import ESTIMATOR, Warp, bundle_matcher, evaluate, matched_points

    data = _npz(reference_dir / "homography.npz")
    count = len({k.split("/")[0] for k in data})
    warps = [Warp(data[f"{i}/image0"], data[f"{i}/image1"], data[f"{i}/homography"]) for i in range(count)]
    engine = evaluate(matched_points(bundle_matcher(bundle), warps), warps)
    reference = evaluate([(data[f"{i}/points0"], data[f"{i}/points1"]) for i in range(count)], warps)
    margin = target.thresholds.homography_auc_margin
    passed = engine["auc@3px"] >= reference["auc@3px"] - margin
    log.info("homography: engine AUC@1/3/5px %.3f/%.3f/%.3f, reference %.3f/%.3f/%.3f (margin %.3f): %s",
             engine["auc@1px"], engine["auc@3px"], engine["auc@5px"], reference["auc@1px"], reference["auc@3px"],
             reference["auc@5px"], margin, "passed" if passed else "FAILED")
    return {"passed": passed, "estimator": ESTIMATOR, "warps": count, "depth": bundle.depth.value if bundle.has_matcher else None,
            "images": "scikit-image photographs (astronaut, coffee, chelsea, rocket, motorcycle), one seeded warp each",
            "gate": f"engine AUC@3px >= reference AUC@3px - {margin:g}", "margin": margin,
            "engine": engine, "reference": reference}

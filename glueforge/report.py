"""Self-contained HTML reports: one per bundle (``report.html``), and an index of a store.

    glueforge report artifacts/store [--out artifacts/store/index.html]

A bundle's report shows what a user checks before deploying it: model, target, runtime and
versions, provenance; the validation table against the target's thresholds; for FP16 targets,
the FP16 engine's agreement with the FP32 model; the latency table and a plot; the matches on the
validation pair; and the commands that rebuild and benchmark it. Images are inline PNG (data
URIs), styles inline, no script: the page opens anywhere, offline. The latency plot needs
matplotlib (the build install has it); without it the table stands alone and the page says so.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from glueforge.licenses import summary

REPORT = "report.html"
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}.pass{color:#13791b;font-weight:600}
.fail{color:#b00020;font-weight:600}.muted{color:#777}code,pre{background:#f6f6f6;font-size:.85em}pre{padding:.6em;overflow-x:auto;white-space:pre-wrap}
img{max-width:100%;border:1px solid #ddd}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _png(picture) -> str:
    """A PIL image or matplotlib figure as an inline <img>."""
    buffer = io.BytesIO()
    if hasattr(picture, "savefig"):
        picture.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    else:
        picture.save(buffer, format="PNG")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; ``header`` None: a key-value table whose first column is its header."""
    if header is None:
        body = "".join(f"<tr><th>{row[0]}</th>" + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>" for row in rows)
        return f"<table>{body}</table>"
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def _verdict(ok: bool) -> str:
    return '<span class="pass">pass</span>' if ok else '<span class="fail">FAIL</span>'


# -- parts -----------------------------------------------------------------------------------------
def latency_plot(rows: Sequence[Mapping[str, Any]], title: str):
    """Bars of p50 latency per graph and batch, whiskers to p90 (a matplotlib figure), or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [f"{r['graph'].strip()}\nbatch {r['batch']}" for r in rows]
    p50 = [r["p50_ms"] for r in rows]
    p90 = [r["p90_ms"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(rows)), 3.2))
    ax.bar(range(len(rows)), p50, color="#3b75af", yerr=[[0] * len(rows), [b - a for a, b in zip(p50, p90)]], capsize=4)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("latency, ms (p50, whisker p90)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    plt.close(fig)
    return fig


def _validation_section(validation: Mapping[str, Any]) -> str:
    thresholds = validation.get("thresholds") or {}
    names = {"keypoint_mnn": ("keypoint_mnn", "keypoints with a mutual nearest neighbour within 1 px (worst image)"),
             "descriptor_cosine": ("descriptor_cosine_mean", "mean descriptor cosine on those keypoints"),
             "match_recall": ("match_recall", "share of the reference's matches reproduced (worst pair)")}
    steps = {"match_recall": ("match_agreement", "adaptive-depth exit: matches agreeing with the golden exit's, both ways "
                                                 "(worst pair)")}
    rows = []
    for graph, result in (validation.get("graphs") or {}).items():
        for size, at_size in result.get("sizes", {}).items():
            metrics = at_size["metrics"]
            for check, (metric, meaning) in [*names.items(), *steps.items()]:
                if metric in metrics:
                    value, threshold = metrics[metric], thresholds.get(check)
                    rows.append((_e(graph), _e(size), _e(meaning), f"{value:.4f}", f"&ge; {threshold}",
                                 _verdict(threshold is None or value >= threshold)))
            if "stop_decisions_agree" in metrics:
                rows.append((_e(graph), _e(size), "adaptive-depth layer: the exit rule's decision on every pair as on the "
                             f"golden outputs (confident share differs by {metrics['confident_share_diff']:.4f})",
                             "yes" if metrics["stop_decisions_agree"] else "no", "yes",
                             _verdict(bool(metrics["stop_decisions_agree"]))))
            if "matches" in metrics:
                rows.append((_e(graph), _e(size), "matches (engine / reference)",
                             f"{int(metrics['matches'])} / {int(metrics.get('reference_matches', 0))}", "", ""))
    status = validation.get("status")
    head = (f"<p>Status: <b>{_e(status)}</b>. Measured with {_e(validation.get('measured_with') or 'the engine')} "
            f"on {_e((validation.get('measured_on') or {}).get('processor', '?'))}; reference: the unpatched upstream "
            "model with the same weights and keypoint count.</p>")
    if status == "unvalidated":
        return head + f"<p class='fail'>{_e(validation.get('reason'))}</p>"
    return head + _table(("graph", "size", "metric", "value", "threshold", ""), rows, numeric=(3,))


def _homography_section(validation: Mapping[str, Any]) -> str:
    h = validation.get("homography")
    if not h:
        return ""
    metrics = ("auc@1px", "auc@3px", "auc@5px", "precision@3px", "matches")
    rows = [(who, *(f"{h[who][k]:.3f}" if k != "matches" else f"{h[who][k]:.0f}" for k in metrics))
            for who in ("engine", "reference")]
    depth = f" The matcher ran at {_e(h['depth'])} depth." if h.get("depth") else ""
    return (f"<h2>Homography accuracy</h2><p>{h['warps']} warps of {_e(h['images'])}; estimator: {_e(h['estimator'])}. "
            f"Gate: {_e(h['gate'])}: {_verdict(h['passed'])}.{depth}</p>"
            + _table(("", "AUC@1px", "AUC@3px", "AUC@5px", "precision@3px", "matches per warp"), rows, numeric=(1, 2, 3, 4, 5)))


def depth_policy(manifest: Mapping[str, Any]) -> str:
    """The matcher's depth policy in words: fixed, with its layers, or adaptive, with its exit rule."""
    depth = (manifest.get("matcher") or {}).get("depth")
    if not depth:
        return "-" if manifest.get("matcher") is None else "fixed"
    if depth["policy"] == "fixed":
        return f"fixed, {depth['layers']} layers"
    return f"adaptive, up to {depth['layers']} layers (depth_confidence {depth['depth_confidence']:g})"


def _depth_section(manifest: Mapping[str, Any], validation: Mapping[str, Any]) -> str:
    """Adaptive depth on the validation pairs: layers used and fixed-depth matches reproduced (``glueforge.depth``)."""
    adaptive = validation.get("adaptive_depth")
    if not adaptive:
        return ""
    rule = adaptive["rule"]
    rows = [(_e(p["size"]), p["pair"], f"{p['layers']} of {rule['layers']}", p["fixed_matches"], f"{p['reproduced']:.3f}")
            for p in adaptive["pairs"]]
    return (f"<h2>Adaptive depth</h2><p>{_e(depth_policy(manifest))}: {_e(rule['rule'])}; thresholds "
            f"{_e(', '.join(f'{t:.3f}' for t in rule['thresholds']))}. The runtime API runs the step graphs "
            "(<code>matcher_layer&lt;i&gt;</code>, <code>matcher_exit&lt;i&gt;</code>) and stops on the host; the end2end and "
            "matcher graphs stay at fixed depth. On the validation pairs:</p>"
            + _table(("size", "pair", "layers", "fixed-depth matches", "reproduced"), rows, numeric=(1, 3, 4)))


def _agreement_section(validation: Mapping[str, Any], precision: str) -> str:
    """Per-output error statistics against the FP32 patched model (for FP16 targets: FP16 vs FP32)."""
    rows = []
    for graph, result in (validation.get("graphs") or {}).items():
        for size, at_size in result.get("sizes", {}).items():
            for output, c in (at_size.get("outputs") or {}).items():
                rows.append((_e(graph), _e(size), _e(output), f"{c['median_absdiff']:.3g}", f"{c['mean_absdiff']:.3g}",
                             f"{c['max_absdiff']:.3g}", f"{c['stat']} &le; {c['atol']:g}", _verdict(c["passed"])))
    if not rows:
        return ""
    title = {"fp16": "FP16 against FP32", "int8": "INT8 extractor against FP32"}.get(precision,
                                                                                  "Engine against the exported PyTorch model")
    intro = ("The FP16 engine's outputs against the FP32 patched PyTorch model on the same inputs (keypoint-indexed "
             "outputs paired by mutual nearest neighbour first)." if precision == "fp16" else
             "The engine (its extractor's convolutions in INT8, the rest FP32) against the FP32 patched PyTorch model on "
             "the same inputs (keypoint-indexed outputs paired by mutual nearest neighbour first)." if precision == "int8" else
             "The engine's outputs against the patched PyTorch model it was exported from, on the same inputs.")
    return (f"<h2>{title}</h2><p>{intro}</p>" + _table(("graph", "size", "output", "median |&Delta;|", "mean |&Delta;|",
                                                        "max |&Delta;|", "tolerance", ""), rows, numeric=(3, 4, 5)))


def _latency_section(benchmarks: Mapping[str, Any] | None, title: str) -> str:
    if not benchmarks:
        return "<h2>Latency</h2><p class='muted'>not measured</p>"
    if benchmarks.get("status") != "measured":
        return (f"<h2>Latency</h2><p>Not measured: {_e(benchmarks.get('reason'))}</p>"
                f"<p>On the device: <code>{_e(benchmarks.get('command'))}</code></p>")
    rows = benchmarks["rows"]
    machine = benchmarks.get("machine") or {}
    table = _table(("graph", "batch", "unit", "image WxH", "runs", "p50 ms per call", "p90 ms", "p99 ms",
                    "units per second", "GFLOP", "× floor", "matcher layers", "peak RSS MiB", "device MiB", "stopped"),
                   [(_e(r["graph"]), r["batch"], _e(r["unit"]), _e(r.get("size", "-")), r["runs"], f"{r['p50_ms']:.1f}",
                     f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['per_second']:.2f}",
                     "-" if r.get("gflop") is None else f"{r['gflop']:.2f}",
                     "-" if r.get("x_floor") is None else f"{r['x_floor']:.1f}",
                     "-" if r.get("layers") is None else f"{r['layers']:g}",
                     "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}",
                     "-" if r["device_mib"] is None else f"{r['device_mib']:.1f}", _e(r["stopped"])) for r in rows],
                   numeric=(1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13))
    rate = benchmarks.get("floor")
    floor_note = (f"<p>&times; floor: p50 over the time of the graph's FLOPs at {rate['gflops']:.1f} GFLOP/s, the rate of "
                  f"{_e(rate['matmul'])} measured in the same run ({_e(rate['measured_with'])}).</p>" if rate else "")
    plot = latency_plot(rows, title)
    where = (f"<p>{_e(machine.get('processor'))}, {machine.get('cores')} logical CPUs"
             + (f", GPU {_e(machine['gpu'])}" if machine.get("gpu") else "") + "; settings "
             + _e(json.dumps(benchmarks.get("settings"))) + "</p>")
    return "<h2>Latency</h2>" + where + table + floor_note + (_png(plot) if plot is not None else
                                                 "<p class='muted'>(no plot: matplotlib is not installed)</p>")


def _picture_section(directory: Path, manifest: Mapping[str, Any]) -> str:
    """The matches (or keypoints) the bundle's sample recorded on its validation pair."""
    from glueforge.draw import keypoints_picture, matches_picture

    path = Path(directory) / "sample.npz"
    if not path.is_file():
        return ""
    with np.load(path) as s:
        sample = {k: s[k] for k in s.files}
    if "matches" in sample:
        title = f"{len(sample['matches'])} matches, {len(sample['keypoints0'])} / {len(sample['keypoints1'])} keypoints"
        picture = matches_picture(sample["image0"], sample["image1"], sample["keypoints0"], sample["keypoints1"],
                                  sample["matches"], sample["mscores"], title)
        caption = "Matches on the validation pair, coloured by score (red 0, yellow 0.5, green 1)."
    else:
        picture = keypoints_picture(sample["image0"], sample["keypoints0"], f"{len(sample['keypoints0'])} keypoints")
        caption = "Keypoints on the first validation image."
    return f"<h2>Validation pair</h2><p>{caption}</p>" + _png(picture)


def _quantization_rows(prepared: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The INT8 graphs of an int8 bundle: recipe, calibration set and what stayed float (``glueforge/quantize.py``)."""
    rows = []
    for graph, meta in prepared.items():
        q = meta.get("int8") if isinstance(meta, Mapping) else None
        if not q:
            continue
        c = q["calibration"]
        float_convs = ", ".join(q.get("float_convolutions") or []) or "none"
        rows.append((f"INT8: {_e(graph)}", f"{_e(q['recipe'])}; {q['quantized_convolutions']} of {q['convolutions']} convolutions "
                     f"in INT8; float convolutions: {_e(float_convs)}; calibrated ({_e(q['method'])}) on {c['images']} "
                     f"images of {_e(c['source'])} (sha256 {_e(c['sha256'][:16])}&hellip;)"))
    return rows


def bundle_report(directory: Path, manifest: Mapping[str, Any], validation: Mapping[str, Any]) -> str:
    """The HTML of one bundle's report (``manifest`` without its file list is enough)."""
    m = manifest
    runtime = m["runtime"]
    title = f"{m['model']} {m['version']} for {m['target']}"
    versions = {k: v for k, v in runtime.items() if k not in ("engines", "files", "outputs", "properties")}
    identity = _table(None, [
        ("model", _e(f"{m['model']} {m['version']}")), ("target", _e(m["target"])), ("precision", _e(m["precision"])),
        ("matcher depth", _e(depth_policy(m))), ("keypoints (K)", m["keypoints"]), ("runtime", _e(json.dumps(versions))),
        ("graphs", "<br>".join(f"<b>{_e(g)}</b>: " + ", ".join(f"{_e(t['name'])} {_e(t['dtype'])} {_e(t['shape'])}"
                                                               for t in spec["inputs"]) + " &rarr; "
                               + ", ".join(f"{_e(t['name'])} {_e(t['shape'])}" for t in spec["outputs"])
                               for g, spec in m["graphs"].items())),
        ("preprocessing", "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in m["preprocessing"].items())),
        *_quantization_rows(m.get("prepared") or {}),
    ])
    prov = m.get("provenance") or {}
    provenance = _table(None, [
        *((f"weight ({_e(role)})", f"{_e(w['name'])} sha256 <code>{_e(w['sha256'][:16])}&hellip;</code> "
           f"({_e(w['trust'])}); {_e('; '.join(w['sources']))}") for role, w in (prov.get("weights") or {}).items()),
        ("licences", _e(summary(m).removeprefix("licences: "))),
        *((f"licence of {_e(name)}", f"{_e(lic['spdx'])}, commercial use {'allowed' if lic['commercial'] else 'NOT allowed'}; "
           f"<a href='{_e(lic['source'])}'>{_e(lic['source'])}</a>") for name, lic in (m.get("licenses") or {}).get("weights", {}).items()
          if isinstance(lic, dict)),
        ("tools", _e(", ".join(f"{k} {v}" for k, v in (prov.get("tools") or {}).items()))),
        ("git commit", _e(prov.get("git_commit"))), ("config digest", f"<code>{_e(prov.get('config_digest'))}</code>"),
        *((("overlays", _e(", ".join(prov["overlays"]))),) if prov.get("overlays") else ()),
    ])
    reproduce = m.get("reproduce") or {}
    commands = "".join(f"<p>{_e(what)}:</p><pre>{_e(command)}</pre>" for what, command in reproduce.items())
    body = (f"<h1>{_e(title)}</h1><p class='muted'>{_e(m.get('description') or '')}</p>{identity}"
            f"<h2>Provenance</h2>{provenance}<h2>Validation</h2>{_validation_section(m['validation'])}"
            f"{_homography_section(validation)}{_depth_section(m, validation)}"
            f"{_agreement_section(validation, m['precision'])}{_latency_section(m.get('benchmarks'), title)}"
            f"{_picture_section(directory, m)}<h2>Reproduce</h2>{commands or '<p class=muted>-</p>'}")
    return _page(title, body)


# -- the index of a store -------------------------------------------------------------------------------
def _batch1(manifest: Mapping[str, Any], graph: str) -> Mapping[str, Any] | None:
    """The bundle's measured benchmark row of ``graph`` at batch 1, or None."""
    bench = manifest.get("benchmarks") or {}
    if bench.get("status") != "measured":
        return None
    return next((r for r in bench["rows"] if r["batch"] == 1 and r["graph"] == graph), None)


def _p50(manifest: Mapping[str, Any], graph: str) -> float | None:
    row = _batch1(manifest, graph)
    return None if row is None else row["p50_ms"]


def _latency(manifest: Mapping[str, Any], graphs: Sequence[str]) -> str:
    """p50 at batch 1 of the first of ``graphs`` that was measured, with its graph and image size; else "-"."""
    for graph in graphs:
        row = _batch1(manifest, graph)
        if row is not None:
            return f"{row['p50_ms']:.1f} ({_e(graph)}, {_e(row.get('size', '?'))})"
    return "-"


def _auc(manifest: Mapping[str, Any]) -> str:
    homography = (manifest.get("validation") or {}).get("homography") or {}
    engine = homography.get("engine") or {}
    return f"{engine['auc@3px']:.3f}" if "auc@3px" in engine else "-"


def _accuracy(manifest: Mapping[str, Any]) -> dict[str, float]:
    worst: dict[str, float] = {}
    for result in (manifest.get("validation", {}).get("graphs") or {}).values():
        for k in ("keypoint_mnn", "descriptor_cosine_mean", "match_recall"):
            if k in result.get("metrics", {}):
                worst[k] = min(worst.get(k, 1.0), result["metrics"][k])
    return worst


def store_index(root: Path, out: Path) -> str:
    """The index page of every bundle under a local store ``root`` (latest version per model and target)."""
    from packaging.version import InvalidVersion, Version

    bundles: dict[tuple[str, str], tuple[Any, Path, dict]] = {}
    for path in sorted(Path(root).glob("*/*/*/manifest.json")):
        manifest = json.loads(path.read_text())
        try:
            version = Version(manifest["version"])
        except (InvalidVersion, KeyError):
            continue
        key = (manifest["model"], manifest["target"])
        if key not in bundles or bundles[key][0] < version:
            bundles[key] = (version, path.parent, manifest)
    models = sorted({m for m, _ in bundles})
    targets = sorted({t for _, t in bundles})
    rows = []
    for model in models:
        for target in targets:
            if (model, target) not in bundles:
                continue
            version, directory, m = bundles[(model, target)]
            acc = _accuracy(m)
            link = directory / REPORT
            rel = Path(os.path.relpath(link, Path(out).parent))
            rows.append((_e(model), _e(target), _e(version), _e(m.get("precision")), _e(depth_policy(m)),
                         _verdict(m["validation"]["status"] == "passed") if m["validation"]["status"] != "unvalidated" else "unvalidated",
                         *(f"{acc[k]:.4f}" if k in acc else "-" for k in ("keypoint_mnn", "descriptor_cosine_mean", "match_recall")),
                         _auc(m), _latency(m, ("end2end", "matcher")), _latency(m, ("extractor",)),
                         f'<a href="{_e(rel.as_posix())}">report</a>' if link.is_file() else "-"))
    table = _table(("model", "target", "version", "precision", "matcher depth", "validation", "keypoint MNN",
                    "descriptor cosine", "match recall", "homography AUC@3px", "p50 ms per pair", "p50 ms per image", ""),
                   rows, numeric=(6, 7, 8, 9, 10, 11))
    chart = _index_plot(bundles)
    body = (f"<h1>glueforge bundles in {_e(root)}</h1><p>Latest version of each model for each target. Accuracy: the "
            "worst over the bundle's validated graphs and sizes against the upstream reference; homography AUC@3px: the "
            "engine's, in the build's homography gate; latency, where measured, at batch 1: per pair (the end2end "
            "graph: both images extracted and matched; else the matcher alone) and per image (the extractor), each "
            "with the graph and the image size (width x height) it was timed at.</p>" + table
            + (_png(chart) if chart is not None else ""))
    return _page(f"glueforge bundles in {root}", body)


def _index_plot(bundles: Mapping[tuple[str, str], tuple[Any, Path, dict]]):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    measured = {key: _p50(m, "end2end") for key, (_, _, m) in bundles.items()}  # per pair: extractor-only models have none
    measured = {k: v for k, v in measured.items() if v is not None}
    if not measured:
        return None
    models = sorted({m for m, _ in measured})
    targets = sorted({t for _, t in measured})
    width = 0.8 / len(targets)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(models)), 3.4))
    for i, target in enumerate(targets):
        values = [measured.get((m, target), 0.0) for m in models]
        ax.bar([j + i * width for j in range(len(models))], values, width, label=target)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))], models, fontsize=8, rotation=20)
    ax.set_ylabel("p50 ms per pair (end2end, batch 1)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    plt.close(fig)
    return fig

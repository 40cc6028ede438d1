"""Latency, throughput and peak memory of a bundle's graphs, and of a tracking loop.

    glueforge bench BUNDLE [--graphs end2end,extractor] [--batch 1,2,4] [--warmup 3] [--runs N | --seconds S]
                           [--sequence DIR] [--json] [--out FILE]

Each graph and batch is timed on the bundle's sample images (``sample.npz``: its validation
pair) through the engine itself (``Bundle.runner``), inputs prepared once, so the figures are the
engine's. Runs repeat until the median is stable (it moved less than ``tolerance`` over the last
block of runs, checked once ``min_runs`` have run), or the time budget or run count ends; each
row says which. ``--sequence DIR`` times what a navigation stack runs through the whole API,
preprocessing included: extract each new frame once (one image), then match it with the
previous frame's features; beside it, the pair graph (``match_pair``) on the same frames.

Peak memory is the process's peak resident set during the row (Linux resets it per row through
``/proc/self/clear_refs``; elsewhere the process's lifetime peak, and the row says so) and, for
engines on a GPU, the bytes the engine holds on the device.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from glueforge import GlueforgeError, floor, machine
from glueforge.api import Bundle, Features, load_image, preprocess, run_layers
from glueforge.depth import parse_step

log = logging.getLogger(__name__)
SAMPLE = "sample.npz"


class BenchError(GlueforgeError):
    """A benchmark that cannot run as asked (a graph the bundle lacks, a batch its profile refuses)."""


@dataclass
class Row:
    """One timed case of ``batch`` units per call: ``unit`` is what ``per_second`` counts (pairs, images or frames), and
    the latencies are per call."""

    graph: str
    batch: int
    unit: str
    size: str  # the images' width x height in pixels as the engine takes them (matcher: K keypoints per image)
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    per_second: float
    peak_rss_mib: float | None
    device_mib: float | None
    stopped: str
    gflop: float | None = None  # the call's arithmetic (glueforge.floor), where counted at this size
    x_floor: float | None = None  # p50 over the time of gflop at the runtime's matrix-multiply rate, measured in the run
    layers: float | None = None  # the matcher layers that ran per pair (adaptive depth: glueforge.depth), mean over runs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Budget:
    """When to stop timing one case."""

    warmup: int = 3
    runs: int | None = None  # exactly this many timed runs (no stability check)
    seconds: float = 10.0  # else: until stable, or this long once min_runs are made
    min_runs: int = 10
    tolerance: float = 0.02  # relative change of the median over the last block that counts as stable


# -- memory --------------------------------------------------------------------------------------------
def _status_kib(*fields: str) -> list[int] | None:
    """The named ``kB`` fields of /proc/self/status (Linux), in order; None where it cannot be read."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return [int(status[f].split()[0]) for f in fields]
    except (OSError, KeyError, ValueError):
        return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS; False where the kernel does not (then the
    peak is the process's lifetime peak). Some kernels accept the write and keep the peak, so it is checked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        return False
    values = _status_kib("VmHWM", "VmRSS")
    return values is not None and values[0] <= values[1] + 16 * 1024  # within 16 MiB of the current RSS: it took


def _peak_rss_mib() -> float | None:
    values = _status_kib("VmHWM")
    if values is not None:
        return values[0] / 1024.0
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except (ImportError, OSError):
        return None


# -- timing -----------------------------------------------------------------------------------------
def time_runs(run: Callable[[], Any], budget: Budget) -> tuple[list[float], str]:
    """Latencies (ms) of repeated ``run()`` calls after ``budget.warmup`` untimed ones, and why it stopped."""
    for _ in range(budget.warmup):
        run()
    latencies: list[float] = []
    started = time.perf_counter()
    previous = None
    while True:
        t0 = time.perf_counter()
        run()
        latencies.append((time.perf_counter() - t0) * 1000.0)
        if budget.runs is not None:
            if len(latencies) >= budget.runs:
                return latencies, f"{budget.runs} runs"
        elif len(latencies) % budget.min_runs == 0:
            median = statistics.median(latencies)
            if previous is not None and abs(median - previous) <= budget.tolerance * previous:
                return latencies, "stable"
            previous = median
        if budget.runs is None and len(latencies) >= budget.min_runs and time.perf_counter() - started >= budget.seconds:
            return latencies, "time budget (not stable)"


def _row(graph: str, batch: int, unit: str, size: str, count: int, latencies: list[float], stopped: str,
         rss: float | None, device: int | None, lifetime: bool) -> Row:
    q = np.percentile(latencies, [50, 90, 99])
    return Row(graph, batch, unit, size, len(latencies), round(float(q[0]), 3), round(float(q[1]), 3), round(float(q[2]), 3),
               round(count * 1000.0 / float(q[0]), 3), None if rss is None else round(rss, 1),
               None if device is None else round(device / 2**20, 1),
               stopped + (" (peak RSS: process lifetime)" if lifetime and rss is not None else ""))


def _measure(graph: str, batch: int, unit: str, size: str, count: int, run: Callable[[], Any], budget: Budget,
             device: Callable[[], int | None]) -> Row:
    lifetime = not _reset_peak_rss()
    latencies, stopped = time_runs(run, budget)
    return _row(graph, batch, unit, size, count, latencies, stopped, _peak_rss_mib(), device(), lifetime)


# -- inputs --------------------------------------------------------------------------------------------
def sample_images(bundle: Bundle) -> list[np.ndarray]:
    """The bundle's sample images (its validation pair), as the caller would pass them."""
    path = bundle.directory / SAMPLE
    if not path.is_file():
        raise BenchError(f"{bundle}: no {SAMPLE} (an unvalidated bundle has none): give images to time with")
    with np.load(path) as sample:
        return [sample[k] for k in ("image0", "image1") if k in sample.files]


def feed(bundle: Bundle, graph: str, batch: int, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs of ``graph`` for ``batch`` pairs (``end2end``, ``matcher``) or images (``extractor``)."""
    pair = [images[0], images[1 if len(images) > 1 else 0]]
    if graph in ("end2end", "extractor"):
        fitted = [bundle.fit(im.shape[:2], graph) for im in pair]
        if fitted[0].graph != fitted[1].graph:
            fitted[1] = fitted[0]  # the second image takes the first's size, resized (timing only)
        prepared = [preprocess(im, bundle.colour, f) for im, f in zip(pair, fitted)]
        count = 2 * batch if graph == "end2end" else batch
        return {"images": np.stack([prepared[i % 2] for i in range(count)])}
    if graph == "matcher":
        features = bundle.extract(pair)
        one = bundle.matcher_feed(features[0], features[1])
        return {name: np.concatenate([value] * batch) for name, value in one.items()}
    raise BenchError(f"unknown graph {graph!r}")


def floor_rate(bundle: Bundle) -> dict[str, Any] | None:
    """The matrix-multiply rate of the processor the bundle's engines run on, measured now by its runtime with the
    engines' settings (``glueforge.floor``); None where its runtime measures none (engines on a GPU)."""
    rate = bundle.matmul_rate()
    if rate is not None:
        log.info("floor: %.1f GFLOP/s (%s)", rate["gflops"], rate["measured_with"])
    return rate


def with_floor(row: Row, spec: dict[str, Any], rate: dict[str, Any] | None) -> Row:
    """``row`` with its GFLOP and x floor where the graph's FLOPs were counted at the row's size (and K)."""
    flops = spec.get("flops")
    if not flops:
        return row
    h, w = flops["image_size"]
    counted_at = f"K={flops['keypoints']}" if row.size.startswith("K=") else f"{w}x{h}"
    if row.size != counted_at:
        return row
    total = floor.graph_flops(spec, row.batch)
    row.gflop = round(total / 1e9, 2)
    if rate is not None:
        row.x_floor = round(floor.times_floor(row.p50_ms, total, rate["gflops"]), 2)
    return row


def bench(bundle: Bundle, graphs: Sequence[str] | None = None, batches: Sequence[int] = (1,),
          budget: Budget = Budget(), images: Sequence[np.ndarray] | None = None,
          rate: dict[str, Any] | None = None, frame: bool = False) -> list[Row]:
    """One row per graph and batch (pairs for ``end2end`` and ``matcher``, images for ``extractor``); with ``rate``
    (:func:`floor_rate`), each row's x floor; with ``frame``, a last row for one frame of a tracking loop at engine
    level (:func:`frame_row`). An adaptive-depth bundle's matcher gets a second row, run layer by layer
    through its step graphs as the runtime API runs it, with the layers that ran (the step graphs have no row of their
    own: they run only in that loop)."""
    images = list(images) if images is not None else sample_images(bundle)
    chosen = list(graphs) if graphs else [g for g in bundle.graphs if parse_step(g) is None]
    steps = [g for g in chosen if parse_step(g) is not None]
    if steps:
        raise BenchError(f"{', '.join(steps)}: adaptive depth's step graphs run only one after another; the 'matcher "
                         "adaptive' row of --graphs matcher times them as the runtime API runs them")
    unknown = [g for g in chosen if g not in bundle.graphs]
    if unknown:
        raise BenchError(f"{bundle}: has no graph {', '.join(unknown)}; its graphs: {', '.join(bundle.graphs)}")
    rows = []
    for graph in chosen:
        for batch in batches:
            limit = bundle.max_batch(graph)
            per_unit = 1 if graph == "extractor" else 2
            if limit is not None and batch * per_unit > limit:
                log.warning("bench %s batch %d: the engine's profile takes at most %d; skipped", graph, batch, limit // per_unit)
                continue
            inputs = feed(bundle, graph, batch, images)
            runner = bundle.runner(graph)
            unit = "images" if graph == "extractor" else "pairs"
            size = (f"{inputs['images'].shape[3]}x{inputs['images'].shape[2]}" if "images" in inputs
                    else f"K={inputs['keypoints'].shape[1]}")
            log.info("bench %s, batch %d %s at %s", graph, batch, unit, size)
            row = _measure(graph, batch, unit, size, batch, lambda: runner.infer(inputs), budget, runner.device_memory)
            rows.append(with_floor(row, bundle.manifest["graphs"][graph], rate))
            if graph == "matcher" and bundle.exit_rule is not None:
                rows.append(_adaptive(bundle, inputs, batch, size, budget))
    if frame:
        rows.append(frame_row(bundle, images, budget))
    return rows


def frame_row(bundle: Bundle, images: Sequence[np.ndarray], budget: Budget) -> Row:
    """What each new frame of a tracking loop costs the engines: the extractor on one image, then the matcher on one
    pair (the previous frame's features are kept), inputs prepared once, as the graph rows are."""
    missing = [g for g in ("extractor", "matcher") if g not in bundle.graphs]
    if missing:
        raise BenchError(f"{bundle}: the frame row times the extractor and the matcher; it has no {', '.join(missing)}")
    x_inputs, m_inputs = feed(bundle, "extractor", 1, images), feed(bundle, "matcher", 1, images)
    extractor, matcher = bundle.runner("extractor"), bundle.runner("matcher")

    def call() -> None:
        extractor.infer(x_inputs)
        matcher.infer(m_inputs)

    size = f"{x_inputs['images'].shape[3]}x{x_inputs['images'].shape[2]}, K={m_inputs['keypoints'].shape[1]}"
    log.info("bench frame: extractor 1 image + matcher 1 pair at %s", size)
    return _measure("frame: extractor 1 image + matcher 1 pair", 1, "frames", size, 1, call, budget, bundle.device_memory)


def _adaptive(bundle: Bundle, inputs: Mapping[str, np.ndarray], batch: int, size: str, budget: Budget) -> Row:
    """The matcher run layer by layer until the exit rule stops (``glueforge.depth``), on the matcher row's inputs."""
    layers: list[int] = []

    def call() -> None:
        layers.append(run_layers(bundle.exit_rule, bundle.run, inputs).layers)

    log.info("bench matcher adaptive, batch %d pairs at %s", batch, size)
    row = _measure(f"matcher adaptive (of {bundle.exit_rule.layers} layers)", batch, "pairs", size, batch, call, budget,
                   bundle.device_memory)
    row.layers = round(float(np.mean(layers[-row.runs:])), 2)
    return row


def sequence(bundle: Bundle, frames: Sequence[Path], budget: Budget = Budget()) -> list[Row]:
    """The tracking loop over ``frames`` (cycled): extract each new frame once, match it with the
    previous frame; and the pair graph on consecutive frames. Whole API calls, preprocessing included."""
    if len(frames) < 2:
        raise BenchError(f"a sequence needs at least 2 frames, got {len(frames)}")
    if not bundle.has_matcher:
        raise BenchError(f"{bundle}: an extractor-only model: --sequence times extraction and matching")
    images = [load_image(p) for p in frames]
    state: dict[str, Any] = {"i": 0, "previous": bundle.extract(images[0])[0]}
    phases: dict[str, list[float]] = {"extract": [], "match": []}
    layers: list[int | None] = []

    def step() -> None:
        state["i"] += 1
        t0 = time.perf_counter()
        current: Features = bundle.extract(images[state["i"] % len(images)])[0]
        t1 = time.perf_counter()
        layers.append(bundle.match(state["previous"], current).layers)
        t2 = time.perf_counter()
        phases["extract"].append((t1 - t0) * 1000.0)
        phases["match"].append((t2 - t1) * 1000.0)
        state["previous"] = current

    sizes = sorted({"x".join(map(str, bundle.fit(image.shape[:2]).graph[::-1])) for image in images})
    size = "/".join(sizes)
    rows = [_measure("tracking: extract 1 + match 1", 1, "frames", size, 1, step, budget, bundle.device_memory)]
    for phase, latencies in phases.items():
        timed = latencies[-rows[0].runs:]
        rows.append(_row(f"  of which {phase}", 1, "frames", size, 1, timed, rows[0].stopped, None, None, False))
    if bundle.exit_rule is not None:  # adaptive depth: the layers each frame's match ran
        rows[0].layers = rows[-1].layers = round(float(np.mean(layers[-rows[0].runs:])), 2)
    pair = {"i": 0}

    def pair_step() -> None:
        pair["i"] += 1
        bundle.match_pair(images[(pair["i"] - 1) % len(images)], images[pair["i"] % len(images)])

    rows.append(_measure("pair: match_pair", 1, "pairs", size, 1, pair_step, budget, bundle.device_memory))
    return rows


def table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width table."""
    header = ("graph", "batch", "unit", "image WxH", "runs", "p50 ms", "p90 ms", "p99 ms", "per s", "GFLOP", "x floor",
              "layers", "peak RSS MiB", "device MiB", "stopped")
    body = [(r.graph, str(r.batch), r.unit, r.size, str(r.runs), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}",
             f"{r.per_second:.2f}", "-" if r.gflop is None else f"{r.gflop:.2f}", "-" if r.x_floor is None else f"{r.x_floor:.1f}",
             "-" if r.layers is None else f"{r.layers:g}",
             "-" if r.peak_rss_mib is None else f"{r.peak_rss_mib:.0f}",
             "-" if r.device_mib is None else f"{r.device_mib:.1f}", r.stopped) for r in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i in (0, 2, 3, 14) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])


def report(bundle: Bundle, rows: Sequence[Row], budget: Budget, sequence_dir: Path | None = None,
           rate: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON record of a bench run: machine, runtime versions, settings, the floor's rate and rows."""
    m = bundle.manifest
    return {"model": m.get("model"), "version": m.get("version"), "target": m.get("target"),
            "status": "measured", "machine": machine.describe(), "runtime": m["runtime"].get("runtime"),
            "runtime_versions": bundle.runtime_versions(), "settings": asdict(budget),
            "floor": rate, "sequence": str(sequence_dir) if sequence_dir else None, "rows": [r.as_dict() for r in rows]}

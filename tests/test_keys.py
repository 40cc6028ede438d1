"""Keys cover what a step reads: a walk over every field of the target and model schemas.

Each field is changed on its own (to another valid value), and the steps whose own keys (code, view
and tools: ``Pipeline.own_key``, without the digests of their inputs) change are compared with the
steps that read the field:

- a target field is read by the target-reading steps whose view declares it
  (``TargetSpec.view``; reading an undeclared one raises, ``test_an_undeclared_read_raises``), and
  ``keypoints`` also by the steps that shape the graphs (through ``ExportSettings``);
- a model field by the steps in the table ``MODEL_READERS``;
- every field by the bundle step, whose manifest records the digest of the model's and the target's
  whole configuration (``provenance.config_digest``).

No builds: the keys are computed from models.yaml alone.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from glueforge.config import Config, project_schema
from glueforge.pipeline import STAGES, Pipeline
from glueforge.views import UndeclaredRead, declared
from tests.project import REPO

TARGET_STAGES = ("fuse", "engine", "validate", "benchmark", "bundle")
GRAPH_STAGES = ("export", "interface", "reference")
# values to try, by field name, where adding to a number or a letter to a string is not a valid change
ALTERNATIVES: dict[str, list[Any]] = {
    "precision": ["fp16", "fp32", "int8"], "method": ["entropy"],
    # calibration images: a real directory of images (scikit-image's), another set than the default one
    "images": [str(Path(__import__("skimage").__file__).parent / "data")], "builder": ["python", "trtexec"], "stat": ["max", "mean"],
    "compute_capability": [["7.5"], ["8.6"]], "graph_optimization_level": ["ORT_ENABLE_BASIC", "ORT_DISABLE_ALL"],
    "performance_hint": ["THROUGHPUT"], "providers": [["CPUExecutionProvider", "CPUExecutionProvider"]],
    "execution_mode": ["ORT_PARALLEL"], "graphs": [["extractor"]], "version": ["9.9.9"], "weights": ["aliked_n32", "disk_lightglue"],
    # min <= opt <= max: changed as a whole
    "batch": [{"min": 1, "opt": 2, "max": 8}, {"min": 2, "opt": 2, "max": 2}, {"min": 1, "opt": 1, "max": 3}, [1, 2]],
}
WHOLE = {"batch"}  # fields whose parts cannot change one at a time
FIXED = {"runtime", "family", "features", "variant"}  # discriminators and shape-changing choices: other specs, not other values
# fields with one valid value on their runtime: fp32 only, the CPU device only
SINGLE = {"targets.openvino.compile.device"}
# model field (dotted path under the model) -> the steps that read it: graph steps per graph ("export/extractor")
MODEL_READERS = {
    "version": {"validate", "benchmark", "bundle"},
    "description": {"bundle"},
    "default": set(),  # which models a bare `doit build` selects: no step reads it
    "extractor": {"export/end2end", "export/extractor", "export/matcher", "interface", "reference", "validate",
                  "benchmark", "bundle"},
    "matcher": {"export/end2end", "export/matcher", "reference", "validate", "benchmark", "bundle"},
    "export.image_size": {"export/end2end", "export/extractor", "export/matcher", "interface", "reference", "validate",
                          "benchmark"},
    "export.sizes": {"interface"},  # the profiles are built from io.json, an input of fuse and engine
    "export.validate_sizes": {"reference"},
    "export.keypoints": {"export/end2end", "export/extractor", "export/matcher", "interface", "reference", "validate"},
    "export.opset": {"export/end2end", "export/extractor", "export/matcher"},
    # the exit rule of adaptive depth: applied on the host, so no graph reads it; the golden outputs of the step graphs,
    # their validation and the manifest do
    "matcher.depth_confidence": {"reference", "validate", "benchmark", "bundle"},
}


def _alternatives(name: str, value: Any) -> list[Any]:
    if name in ALTERNATIVES:
        return [v for v in ALTERNATIVES[name] if v != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, value + 32, value * 2]
    if isinstance(value, float):
        return [value / 2 if value else 0.5, value + 0.01]
    if isinstance(value, str):
        return [value + "x"]
    if value is None:
        return [512, 0.5, "x", ["extractor"]]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [[value[0] + 32, *value[1:]], [value[0] * 2, *value[1:]]]
    if isinstance(value, list) and value and isinstance(value[0], list):
        return [[[value[0][0] + 32, *value[0][1:]], *value[1:]]]
    if isinstance(value, list):
        return [[*value, *value[-1:]]] if value else []
    return []


def _leaves(data: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(data, dict) and data and (not path or path[-1] not in WHOLE):
        for key, value in data.items():
            if key not in FIXED:
                yield from _leaves(value, (*path, key))
    else:
        yield path


def _get(data: dict, path: tuple[str, ...]) -> Any:
    for p in path:
        data = data[p]
    return data


def _set(data: dict, path: tuple[str, ...], value: Any) -> dict:
    data = copy.deepcopy(data)
    parent = _get(data, path[:-1])
    parent[path[-1]] = value
    return data


@pytest.fixture(scope="module")
def base() -> tuple[dict, Config]:
    config = Config.load(REPO / "models.yaml", [REPO / "overlays" / "adaptive_depth.yaml"])  # with adaptive-depth models
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    # every field explicit, defaults included, so that the walk reaches each one
    data["targets"] = {n: t.model_dump(mode="json") for n, t in config.project.targets.items()}
    data["models"] = {n: m.model_dump(mode="json") for n, m in config.project.models.items()}
    return data, config


def _keys(config: Config, model: str, target: str) -> dict[str, str]:
    pipeline = Pipeline(config, REPO)
    keys = {}
    for stage in STAGES:
        for graph in pipeline.graphs(stage, model, target):
            name = f"{stage}/{graph}" if graph else stage
            keys[name] = repr(pipeline.own_key(stage, model, target, graph))
    return keys


def _variants(data: dict, path: tuple[str, ...]) -> Iterator[tuple[Any, Config]]:
    """Valid configurations with the field at ``path`` changed, one per alternative value that validates."""
    for value in _alternatives(path[-1], _get(data, path)):
        try:
            project = project_schema().model_validate(_set(data, path, value))
        except Exception:  # noqa: BLE001 - an alternative this field does not take
            continue
        yield value, Config(REPO / "models.yaml", project, "")


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {step for step in before if before[step] != after[step]}


def _walk(base, model: str, target: str, root: tuple[str, ...], readers_of) -> int:
    """Change each field under ``root`` on its own and check that the steps re-keyed are ``readers_of(path, steps)``
    (None: the field is skipped); return how many fields were walked."""
    data, config = base
    before = _keys(config, model, target)
    walked = 0
    for path in _leaves(_get(data, root), root):
        where = ".".join(path)
        variants = list(_variants(data, path))
        if where in SINGLE:
            assert not variants
            continue
        readers = readers_of(path, before)
        if readers is None:
            continue
        assert variants, f"{where}: no alternative value validates; add one to ALTERNATIVES"
        value, changed_config = variants[0]
        changed = _changed(before, _keys(changed_config, model, target))
        assert changed == readers | {"bundle"}, f"{where} -> {value!r}: re-keyed {sorted(changed)}, read by {sorted(readers)}"
        walked += 1
    return walked


@pytest.mark.parametrize("target", ["cpu", "openvino", "orin_nano", "agx_orin", "rtx", "cpu_int8", "orin_nano_int8"])
def test_each_target_field_rekeys_exactly_the_steps_that_read_it(base, target):
    spec = base[1].target(target)

    def readers(path, steps):
        field = path[2]
        read = {s for s in TARGET_STAGES if field in declared(spec.view(s))}
        if field == "keypoints":  # the effective K of the graphs (ExportSettings)
            read |= {s for s in steps if s.split("/")[0] in GRAPH_STAGES} | {"validate"}
        return read

    assert _walk(base, "aliked_lightglue", target, ("targets", target), readers) >= 20


@pytest.mark.parametrize("model", ["aliked_lightglue", "aliked_t16", "aliked_lightglue_adaptive"])
def test_each_model_field_rekeys_exactly_the_steps_that_read_it(base, model):
    data = base[0]

    def readers(path, steps):
        if path[2:] == ("export", "graphs") or _get(data, path) is None and path[2] == "matcher":
            return None  # which steps exist: the graphs built, or a matcher for an extractor-only model
        if path[2:] == ("matcher", "n_layers") and _get(data, path[:3]).get("depth_confidence") is not None:
            return None  # which steps exist: an adaptive matcher's step graphs, one pair per layer
        where = ".".join(path[2:4]) if path[2] in ("export", "matcher") and ".".join(path[2:4]) in MODEL_READERS else path[2]
        readers = MODEL_READERS[where]
        if "export/matcher" in readers and path[2] != "extractor":  # the step graphs (adaptive depth) hold the matcher alone
            readers = readers | {s for s in steps if s.startswith("export/matcher_")}
        return {s for s in readers if s in steps}

    assert _walk(base, model, "cpu", ("models", model), readers) >= 6


def test_the_batch_profile_rekeys_the_parser_proxy_and_the_match_form_not_the_extractor(base):
    _, config = base
    model = "aliked_lightglue"
    orin, agx = _keys(config, model, "orin_nano"), _keys(config, model, "agx_orin")
    # agx_orin differs from orin_nano in its builder, workspace and batch profile: its parser proxy check is its own
    assert orin["fuse"] != agx["fuse"]
    # orin_nx differs only in description and workspace: the fused graphs (and their proxy check) are shared
    assert orin["fuse"] == _keys(config, model, "orin_nx")["fuse"]
    # the match output form (list on cpu, dense on TensorRT) shapes end2end and matcher, not the extractor graph,
    # and not the reference (golden outputs are recorded in the dense form)
    cpu = _keys(config, model, "cpu")
    assert cpu["export/extractor"] == orin["export/extractor"] == _keys(config, model, "rtx")["export/extractor"]
    assert cpu["export/end2end"] != orin["export/end2end"] and cpu["export/matcher"] != orin["export/matcher"]
    assert cpu["reference"] == orin["reference"]


def test_an_undeclared_read_raises(base):
    _, config = base
    view = config.target("agx_orin").view("fuse")
    assert view.batch.max == 4 and view.precision == "fp16"  # declared
    assert view.match_output == "dense"  # class attributes are the runtime's, not configuration
    with pytest.raises(UndeclaredRead, match="workspace_mib"):
        view.workspace_mib

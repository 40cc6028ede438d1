"""glueforge.summary: the line per model that ends a failed `doit build` (the real run: test_build's
test_every_model_builds_where_its_weights_are_reachable)."""

from __future__ import annotations

from doit.exceptions import TaskFailed, UnmetDependency

from glueforge.config import Config
from glueforge.pipeline import Pipeline
from glueforge.summary import outcomes, text
from glueforge.tasks import Plan
from tests.project import REPO


def plan(tmp_path) -> Plan:
    return Plan(Pipeline(Config.load(REPO / "models.yaml"), root=tmp_path), "cpu",
                "xfeat_lighterglue,disk_lightglue,superpoint_open,aliked_lightglue")


def test_each_model_gets_its_bundle_or_the_step_that_stopped_it(tmp_path):
    failed = {
        "fetch:superpoint_open": TaskFailed("weight 'superpoint_open': no source could be reached\n  https://...\nTo supply it"),
        "export:cpu:superpoint_open": UnmetDependency("fetch:superpoint_open"),
        "bundle:cpu:superpoint_open": UnmetDependency("export:cpu:superpoint_open"),
        "validate:cpu:disk_lightglue": TaskFailed("validation failed: descriptors max 3e-4 > 0"),
        "bundle:cpu:disk_lightglue": UnmetDependency("validate:cpu:disk_lightglue"),
        "bundle:cpu:aliked_lightglue": UnmetDependency("benchmark:cpu:aliked_lightglue"),
    }
    lines = outcomes(plan(tmp_path), failed)
    assert list(lines) == ["xfeat_lighterglue", "disk_lightglue", "superpoint_open", "aliked_lightglue"]
    assert lines["xfeat_lighterglue"] == "bundled: artifacts/store/xfeat_lighterglue/0.1.0/cpu"
    assert lines["disk_lightglue"] == "failed at validate: validation failed: descriptors max 3e-4 > 0"
    assert lines["superpoint_open"] == ("failed at fetch superpoint_open: weight 'superpoint_open': no source could be "
                                        "reached (the details are above)")
    assert lines["aliked_lightglue"] == "not built: a step it needs failed"
    summary = text(plan(tmp_path), failed).splitlines()
    assert summary[0] == "build summary for target cpu: 1 bundled, 3 failed"
    assert summary[1].split() == ["xfeat_lighterglue", "bundled:", "artifacts/store/xfeat_lighterglue/0.1.0/cpu"]

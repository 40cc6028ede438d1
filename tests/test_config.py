"""models.yaml validation: every bad configuration is a ConfigError naming the file, the key
path and the offending value, raised at load time, before any work (and before the store is
touched)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

from glueforge import depth
from glueforge.config import Config, ConfigError
from glueforge.runtimes.tensorrt import MAX_TOPK as TENSORRT_MAX_TOPK

REPO = Path(__file__).resolve().parent.parent
MODELS_YAML = REPO / "models.yaml"


@pytest.fixture(scope="module")
def base() -> dict:
    return yaml.safe_load(MODELS_YAML.read_text())


def write_variant(base: dict, tmp_path: Path, mutate: Callable[[dict], None], name: str = "models.yaml") -> Path:
    data = copy.deepcopy(base)
    mutate(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    return str(info.value)


# -- the real file ------------------------------------------------------------------------------
def test_real_models_yaml_loads():
    config = Config.load(MODELS_YAML)
    assert set(config.project.models) == {"aliked_lightglue", "disk_lightglue", "xfeat_lighterglue", "aliked_t16",
                                          "aliked_n16rot", "aliked_n32", "superpoint_lightglue", "superpoint_dense",
                                          "superpoint_open", "sift_lightglue"}
    assert set(config.project.targets) == {"cpu", "openvino", "orin_nano", "orin_nx", "agx_orin", "rtx_2060", "rtx",
                                           "cpu_int8", "openvino_int8", "orin_nano_int8", "cuda"}
    assert config.path == MODELS_YAML
    for model in config.project.models:
        for role in ("extractor", "matcher"):
            part = getattr(config.model(model), role)
            assert part is None or part.weights is None or part.weights in config.project.weights
        for target in config.project.targets:
            settings = config.export_settings(model, target)
            assert settings.keypoints >= 16
            if config.target(target).runtime.startswith("tensorrt"):
                assert settings.keypoints <= TENSORRT_MAX_TOPK


def test_unchanged_dump_of_real_file_loads(base, tmp_path):
    """The round trip used by every variant below is itself valid: the variants fail only by their mutation."""
    path = write_variant(base, tmp_path, lambda d: None)
    assert Config.load(path).project == Config.load(MODELS_YAML).project


# -- missing fields and wrong types ---------------------------------------------------------------
def test_missing_field(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: d["models"]["aliked_lightglue"]["export"].pop("keypoints"))
    msg = load_error(path)
    assert str(path) in msg
    assert "models.aliked_lightglue.export.keypoints" in msg
    assert "field required" in msg.lower()


@pytest.mark.parametrize(
    "key, value",
    [("keypoints", "many"), ("image_size", "big"), ("opset", "seventeen")],
)
def test_wrong_type(base, tmp_path, key, value):
    path = write_variant(base, tmp_path, lambda d: d["models"]["aliked_lightglue"]["export"].__setitem__(key, value))
    msg = load_error(path)
    assert str(path) in msg
    assert f"models.aliked_lightglue.export.{key}" in msg
    assert value in msg


def test_out_of_range_value(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: d["models"]["disk_lightglue"]["export"].__setitem__("image_size", [480, 8]))
    msg = load_error(path)
    assert str(path) in msg
    assert "models.disk_lightglue.export.image_size.1" in msg
    assert "(got 8)" in msg


def test_unknown_key(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: d["targets"]["cpu"].__setitem__("precsion", "fp16"))
    msg = load_error(path)
    assert str(path) in msg
    assert "targets.cpu.precsion" in msg
    assert "fp16" in msg


def test_not_a_mapping(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("- just\n- a list\n")
    msg = load_error(path)
    assert str(path) in msg


def test_invalid_yaml(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models: {aliked: [\n")
    msg = load_error(path)
    assert str(path) in msg
    assert "YAML" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = load_error(path)
    assert str(path) in msg


# -- unknown selections -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def config() -> Config:
    return Config.load(MODELS_YAML)


def test_unknown_target_lists_valid_ones(config):
    with pytest.raises(ConfigError) as info:
        config.target("nosuch")
    msg = str(info.value)
    assert "nosuch" in msg and str(MODELS_YAML) in msg
    assert "cpu" in msg and "orin_nano" in msg


def test_unknown_model_lists_valid_ones(config):
    with pytest.raises(ConfigError) as info:
        config.model("nosuch")
    msg = str(info.value)
    assert "nosuch" in msg and str(MODELS_YAML) in msg
    assert "aliked_lightglue" in msg and "disk_lightglue" in msg


def test_the_adaptive_depth_overlay_adds_the_same_models_with_their_step_graphs():
    config = Config.load(MODELS_YAML, [REPO / "overlays" / "adaptive_depth.yaml"])
    for model in ("aliked_lightglue", "disk_lightglue"):
        fixed, adaptive = config.model(model), config.model(f"{model}_adaptive")
        assert adaptive.matcher.at_fixed_depth() == fixed.matcher and adaptive.extractor == fixed.extractor
        assert adaptive.export == fixed.export and adaptive.matcher.exit_rule.depth_confidence == 0.95
        assert adaptive.graphs == fixed.graphs + depth.step_graphs(9)


def test_select_models(config):
    defaults = ["aliked_lightglue", "disk_lightglue", "xfeat_lighterglue", "aliked_t16", "aliked_n16rot", "aliked_n32"]
    assert config.select_models(None) == defaults  # the models validated on real weights, in models.yaml's order
    assert config.select_models("all") == list(config.project.models)
    assert set(config.select_models("all")) - set(defaults) == {"superpoint_lightglue", "superpoint_dense",
                                                                "superpoint_open", "sift_lightglue"}
    assert config.select_models(" disk_lightglue , aliked_lightglue") == ["disk_lightglue", "aliked_lightglue"]
    with pytest.raises(ConfigError) as info:
        config.select_models("aliked_lightglue,nosuch")
    msg = str(info.value)
    assert "nosuch" in msg
    assert "aliked_lightglue" in msg and "disk_lightglue" in msg


def test_without_defaults_a_bare_build_takes_every_model(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: [m.pop("default", None) for m in d["models"].values()])
    config = Config.load(path)
    assert config.select_models(None) == list(config.project.models)


def test_a_model_named_all_is_refused(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: d["models"].__setitem__("all", d["models"]["xfeat_lighterglue"]))
    msg = load_error(path)
    assert str(path) in msg and "models.all" in msg and "reserved" in msg


def test_export_settings_of_unknown_target(config):
    with pytest.raises(ConfigError, match="orin_nano"):
        config.export_settings("aliked_lightglue", "jetson")


# -- TensorRT TopK limit ------------------------------------------------------------------------------
def test_target_keypoints_above_tensorrt_topk(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: d["targets"]["orin_nano"].__setitem__("keypoints", 4096))
    msg = load_error(path)
    assert str(path) in msg
    assert "targets.orin_nano.keypoints" in msg
    assert "4096" in msg and str(TENSORRT_MAX_TOPK) == "3840" and "3840" in msg


def test_model_keypoints_inherited_by_tensorrt_target(base, tmp_path):
    def mutate(d):
        d["targets"]["orin_nano"].pop("keypoints")
        d["models"]["disk_lightglue"]["export"]["keypoints"] = 4096

    msg = load_error(write_variant(base, tmp_path, mutate))
    assert str(tmp_path / "models.yaml") in msg
    assert "models.disk_lightglue.export.keypoints" in msg
    assert "orin_nano" in msg
    assert "4096" in msg and "3840" in msg


def test_topk_limit_is_inclusive(base, tmp_path):
    def mutate(d):
        d["targets"]["orin_nano"]["keypoints"] = 3840

    config = Config.load(write_variant(base, tmp_path, mutate))
    assert config.export_settings("aliked_lightglue", "orin_nano").keypoints == 3840

    def mutate_over(d):
        d["targets"]["orin_nano"]["keypoints"] = 3841

    assert "3841" in load_error(write_variant(base, tmp_path, mutate_over))


def test_large_model_keypoints_allowed_when_tensorrt_target_overrides(base, tmp_path):
    """K=4096 is fine for onnxruntime, and for orin_nano when the target sets its own K."""

    def mutate(d):
        d["models"]["aliked_lightglue"]["export"]["keypoints"] = 4096
        d["targets"]["orin_nano"]["keypoints"] = 2048

    config = Config.load(write_variant(base, tmp_path, mutate))
    assert config.export_settings("aliked_lightglue", "cpu").keypoints == 4096
    assert config.export_settings("aliked_lightglue", "orin_nano").keypoints == 2048


def test_tensorrt_rtx_runtime_also_limited(base, tmp_path):
    def mutate(d):
        d["targets"]["orin_nano"]["runtime"] = "tensorrt_rtx"
        for key in ("builder", "tensorrt_version", "cuda_version", "jetpack", "builder_optimization_level"):
            d["targets"]["orin_nano"].pop(key)  # TensorRT's own settings: an RTX target refuses them
        d["targets"]["orin_nano"]["compute_capability"] = ["8.6"]
        d["targets"]["orin_nano"]["keypoints"] = 4096

    msg = load_error(write_variant(base, tmp_path, mutate))
    assert "targets.orin_nano.keypoints" in msg and "3840" in msg


# -- weights and versions ------------------------------------------------------------------------------
def test_undeclared_weight_reference(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: d["models"]["aliked_lightglue"]["matcher"].__setitem__("weights", "nosuch"))
    msg = load_error(path)
    assert str(path) in msg
    assert "models.aliked_lightglue.matcher.weights" in msg
    assert "nosuch" in msg
    # the declared ones are listed
    for name in base["weights"]:
        assert name in msg


@pytest.mark.parametrize(
    "sha",
    ["abc", "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f",  # 63 hex
     "zz" * 32],
)
def test_invalid_sha256(base, tmp_path, sha):
    path = write_variant(base, tmp_path, lambda d: d["weights"]["aliked_n16"].__setitem__("sha256", sha))
    msg = load_error(path)
    assert str(path) in msg
    assert "weights.aliked_n16.sha256" in msg
    assert sha in msg


def test_non_https_url(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: d["weights"]["disk_depth"]["sources"].__setitem__(1, {"https": "http://example.com/w.pth"}))
    msg = load_error(path)
    assert str(path) in msg
    assert "weights.disk_depth.sources.1" in msg
    assert "http://example.com/w.pth" in msg


def test_empty_sources(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: d["weights"]["disk_depth"].__setitem__("sources", []))
    msg = load_error(path)
    assert "weights.disk_depth.sources" in msg


@pytest.mark.parametrize("version", ["not a version", "1.0.0-beta_x!"])
def test_bad_version_string(base, tmp_path, version):
    path = write_variant(base, tmp_path, lambda d: d["models"]["disk_lightglue"].__setitem__("version", version))
    msg = load_error(path)
    assert str(path) in msg
    assert "models.disk_lightglue.version" in msg
    assert version in msg


def test_aliked_needs_variant(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: d["models"]["aliked_lightglue"]["extractor"].pop("variant"))
    msg = load_error(path)
    assert "models.aliked_lightglue.extractor" in msg
    assert "variant" in msg


# -- end to end: a bad configuration stops `doit build` before any work ----------------------------------
def _copy_repo(dest: Path) -> Path:
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, text=True, check=True).stdout
    others = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout
    for rel in {r for r in (listed + others).split("\0") if r}:
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture()
def repo_copy(tmp_path) -> Path:
    copy_root = _copy_repo(tmp_path / "repo")
    assert (copy_root / "dodo.py").is_file() and (copy_root / "glueforge" / "config.py").is_file()
    assert not (copy_root / "artifacts").exists()
    return copy_root


def _doit(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GLUEFORGE_DOWNLOAD_CACHE")}
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def _assert_nothing_built(root: Path) -> None:
    store = root / "artifacts" / "store"
    assert not store.exists() or not any(store.iterdir()), f"store has entries: {list(store.rglob('*'))}"
    cas = root / "artifacts" / "cas"
    assert not cas.exists() or not any(p.is_file() for p in cas.rglob("*")), f"cas has entries: {list(cas.rglob('*'))}"
    downloads = root / "artifacts" / "downloads"
    assert not downloads.exists() or not any(p.is_file() for p in downloads.rglob("*"))


@pytest.mark.parametrize(
    "mutate, key_path, value",
    [
        (lambda d: d["targets"]["orin_nano"].__setitem__("keypoints", 4096), "targets.orin_nano.keypoints", "4096"),
        (lambda d: d["models"]["aliked_lightglue"]["export"].__setitem__("keypoint_count", 512),
         "models.aliked_lightglue.export.keypoint_count", "512"),
    ],
    ids=["k4096-orin", "unknown-key"],
)
def test_doit_build_with_bad_config_builds_nothing(base, repo_copy, mutate, key_path, value):
    models_yaml = write_variant(base, repo_copy, mutate)
    result = _doit(repo_copy, "build", "target=cpu")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert str(models_yaml) in out  # the copy's models.yaml, not the repository's
    assert key_path in out and value in out
    assert "Traceback" not in out
    _assert_nothing_built(repo_copy)


def test_doit_build_unknown_target(repo_copy):
    result = _doit(repo_copy, "build", "target=nosuch")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "nosuch" in out and "cpu" in out and "orin_nano" in out
    assert "Traceback" not in out
    _assert_nothing_built(repo_copy)


def test_doit_build_unknown_model(repo_copy):
    result = _doit(repo_copy, "build", "target=cpu", "model=aliked_lightglue,nosuch")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "nosuch" in out and "aliked_lightglue" in out and "disk_lightglue" in out
    _assert_nothing_built(repo_copy)


def test_fp32_for_turing_on_tensorrt_rtx_is_refused_at_load(base, tmp_path):
    def mutate(d):
        d["targets"]["rtx_2060"]["precision"] = "fp32"

    path = write_variant(base, tmp_path, mutate)
    msg = load_error(path)
    assert str(path) in msg and "targets.rtx_2060" in msg
    assert "FP32 GEMM is not supported" in msg and "Turing" in msg


def test_tensorrt_rtx_compute_capability_must_be_known(base, tmp_path):
    msg = load_error(write_variant(base, tmp_path, lambda d: d["targets"]["rtx"].__setitem__("compute_capability", ["8.7"])))
    assert "targets.rtx" in msg and "8.7" in msg and "8.6" in msg


def test_tensorrt_targets_get_dense_match_outputs():
    config = Config.load(MODELS_YAML)
    assert config.export_settings("aliked_lightglue", "cpu").match_output == "list"
    for target in ("orin_nano", "rtx", "rtx_2060"):
        assert config.export_settings("aliked_lightglue", target).match_output == "dense"


# -- model shapes: extractor-only models, graphs, image sizes ------------------------------------------------
def test_extractor_only_model_has_the_extractor_graph_only(base, tmp_path):
    config = Config.load(MODELS_YAML)
    for model in ("aliked_t16", "aliked_n16rot", "aliked_n32"):
        assert config.model(model).matcher is None
        assert config.export_settings(model, "cpu").graphs == ["extractor"]
    path = write_variant(base, tmp_path, lambda d: d["models"]["aliked_t16"]["export"].__setitem__("graphs", ["end2end"]))
    msg = load_error(path)
    assert "models.aliked_t16: export.graphs ['end2end']: this model has only ['extractor']" in msg


def test_image_size_must_be_a_multiple_of_the_divisor(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: d["models"]["aliked_t16"]["export"].__setitem__("validate_sizes", [[376, 1241]]))
    msg = load_error(path)
    assert "export.validate_sizes.0 [376, 1241]: aliked needs multiples of 32" in msg


def test_validated_sizes_must_lie_in_the_profile(base, tmp_path):
    path = write_variant(base, tmp_path, lambda d: d["models"]["aliked_lightglue"]["export"].__setitem__(
        "sizes", {"min": [256, 320], "max": [480, 640]}))
    msg = load_error(path)
    assert "models.aliked_lightglue.export" in msg and "[384, 1248] lies outside" in msg


def test_profile_sizes_reach_the_export_settings():
    settings = Config.load(MODELS_YAML).export_settings("aliked_lightglue", "orin_nano")
    assert settings.sizes == {"min": [256, 320], "opt": [480, 640], "max": [768, 1280]}
    assert settings.all_sizes == [(480, 640), (384, 1248)]

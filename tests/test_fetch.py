"""fetch: sources tried in order, verified by sha256; a failure leaves neither the weight nor a
partial download in the cache."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import ssl
import threading
from pathlib import Path

import pytest

from glueforge.config import Weight
from glueforge.fetch import FetchError, fetch, weight_path
from glueforge.files import sha256_file

PAYLOAD = bytes(range(256)) * 4096 + b"glueforge"  # ~1 MiB, not a multiple of the copy chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def make_weight(*sources: dict, sha256: str = PAYLOAD_SHA) -> Weight:
    return Weight.model_validate({"sha256": sha256, "sources": list(sources)})


def assert_no_leftovers(cache_dir: Path, weight: Weight) -> None:
    assert not weight_path(cache_dir, weight).exists()
    weights = cache_dir / "weights"
    if weights.exists():
        entries = [p.name for p in weights.iterdir()]
        assert not [n for n in entries if n.endswith(".part")], entries
        assert f"{weight.sha256}.pth" not in entries
        assert entries == [], entries


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture()
def good_file(tmp_path) -> Path:
    path = tmp_path / "src" / "weight.pth"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


# -- file sources -------------------------------------------------------------------------------------
def test_file_source(cache_dir, good_file, tmp_path):
    weight = make_weight({"file": str(good_file)})
    path = fetch("w", weight, cache_dir, tmp_path)
    assert path == weight_path(cache_dir, weight)
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{PAYLOAD_SHA}.pth"]


def test_relative_file_source_resolves_against_project_root(cache_dir, good_file, tmp_path):
    weight = make_weight({"file": "src/weight.pth"})
    path = fetch("w", weight, cache_dir, tmp_path)
    assert sha256_file(path) == PAYLOAD_SHA


def test_file_with_wrong_bytes(cache_dir, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(PAYLOAD[:-1] + b"X")
    actual = hashlib.sha256(bad.read_bytes()).hexdigest()
    weight = make_weight({"file": str(bad)})
    with pytest.raises(FetchError) as info:
        fetch("aliked_n16", weight, cache_dir, tmp_path)
    msg = str(info.value)
    assert "aliked_n16" in msg
    assert PAYLOAD_SHA in msg and actual in msg
    assert str(bad) in msg
    assert_no_leftovers(cache_dir, weight)


def test_missing_file_source(cache_dir, tmp_path):
    missing = tmp_path / "nope.pth"
    weight = make_weight({"file": str(missing)})
    with pytest.raises(FetchError) as info:
        fetch("w", weight, cache_dir, tmp_path)
    assert str(missing) in str(info.value)
    assert_no_leftovers(cache_dir, weight)


def test_sources_tried_in_order(cache_dir, good_file, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not the weight")
    weight = make_weight({"file": str(tmp_path / "nope.pth")}, {"file": str(bad)}, {"file": str(good_file)})
    path = fetch("w", weight, cache_dir, tmp_path)
    assert path == weight_path(cache_dir, weight)
    assert sha256_file(path) == PAYLOAD_SHA
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PAYLOAD_SHA
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_all_sources_fail_reports_each(cache_dir, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not the weight")
    weight = make_weight({"file": str(tmp_path / "nope.pth")}, {"file": str(bad)})
    with pytest.raises(FetchError) as info:
        fetch("w", weight, cache_dir, tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "nope.pth") in msg and str(bad) in msg
    assert hashlib.sha256(b"not the weight").hexdigest() in msg
    assert_no_leftovers(cache_dir, weight)


# -- the cache ------------------------------------------------------------------------------------------
def test_cached_weight_needs_no_network(cache_dir, tmp_path):
    weight = make_weight({"https": "https://127.0.0.1:9/x.pth"})
    dest = weight_path(cache_dir, weight)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD)
    mtime = dest.stat().st_mtime_ns
    assert fetch("w", weight, cache_dir, tmp_path) == dest
    assert dest.read_bytes() == PAYLOAD and dest.stat().st_mtime_ns == mtime


@pytest.fixture()
def no_backoff(monkeypatch):
    """Keep failing https tests fast: urllib3 retries without sleeping between attempts."""
    import urllib3

    monkeypatch.setattr(urllib3.Retry, "get_backoff_time", lambda self: 0)


def test_unreachable_source_without_cache_fails(cache_dir, tmp_path, no_backoff):
    """The control of the test above: the same weight without a cached file does need the network."""
    weight = make_weight({"https": "https://127.0.0.1:9/x.pth"})
    with pytest.raises(FetchError) as info:
        fetch("w", weight, cache_dir, tmp_path)
    assert "https://127.0.0.1:9/x.pth" in str(info.value)
    assert_no_leftovers(cache_dir, weight)


def test_corrupt_cached_file_is_replaced(cache_dir, good_file, tmp_path):
    weight = make_weight({"file": str(good_file)})
    dest = weight_path(cache_dir, weight)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"corrupted")
    assert fetch("w", weight, cache_dir, tmp_path) == dest
    assert sha256_file(dest) == PAYLOAD_SHA
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_corrupt_cached_file_removed_when_no_source_works(cache_dir, tmp_path):
    weight = make_weight({"file": str(tmp_path / "nope.pth")})
    dest = weight_path(cache_dir, weight)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"corrupted")
    with pytest.raises(FetchError):
        fetch("w", weight, cache_dir, tmp_path)
    assert_no_leftovers(cache_dir, weight)


# -- https over real TLS ------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    truncate = False
    gzip = False

    def do_GET(self):  # noqa: N802
        if self.gzip:  # a server compressing on its own, announced by Content-Encoding
            body = gzip.compress(PAYLOAD)
            length = len(body)
        else:
            body = PAYLOAD[: len(PAYLOAD) // 2] if self.truncate else PAYLOAD
            length = len(PAYLOAD)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if self.gzip:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    return authority, bundle


def _serve(ca, truncate: bool, gzip: bool = False):
    authority, _ = ca
    handler = type("Handler", (_Handler,), {"truncate": truncate, "gzip": gzip})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, f"https://127.0.0.1:{server.server_address[1]}/weight.pth"


@pytest.fixture()
def tls_server(ca, monkeypatch):
    """Start an HTTPS server; the process trusts its CA through SSL_CERT_FILE only."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca[1]))
    servers = []

    def start(truncate: bool, gzip: bool = False) -> str:
        server, url = _serve(ca, truncate, gzip)
        servers.append(server)
        return url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_https_download(cache_dir, tmp_path, tls_server):
    """A full download over TLS verifies: SSL_CERT_FILE is honoured by urllib3's default context."""
    url = tls_server(truncate=False)
    weight = make_weight({"https": url})
    path = fetch("w", weight, cache_dir, tmp_path)
    assert sha256_file(path) == PAYLOAD_SHA


def test_https_untrusted_certificate_fails(cache_dir, tmp_path, ca, monkeypatch, no_backoff):
    """Without the CA the same server is refused (so the test above really verified the certificate)."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server, url = _serve(ca, truncate=False)
    try:
        weight = make_weight({"https": url})
        with pytest.raises(FetchError) as info:
            fetch("w", weight, cache_dir, tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    msg = str(info.value)
    assert url in msg
    assert "CERTIFICATE_VERIFY_FAILED" in msg or "certificate" in msg.lower()
    assert_no_leftovers(cache_dir, weight)


def test_https_truncated_download(cache_dir, tmp_path, tls_server):
    url = tls_server(truncate=True)
    weight = make_weight({"https": url})
    with pytest.raises(FetchError) as info:
        fetch("aliked_n16", weight, cache_dir, tmp_path)
    msg = str(info.value)
    assert url in msg
    assert "aliked_n16" in msg
    assert "CERTIFICATE_VERIFY_FAILED" not in msg  # it failed on the body, not on TLS
    assert any(s in msg for s in ("IncompleteRead", "truncated", "Connection broken")), msg
    assert_no_leftovers(cache_dir, weight)


def test_https_truncated_then_file_source(cache_dir, good_file, tmp_path, tls_server):
    url = tls_server(truncate=True)
    weight = make_weight({"https": url}, {"file": str(good_file)})
    path = fetch("w", weight, cache_dir, tmp_path)
    assert sha256_file(path) == PAYLOAD_SHA
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_https_content_encoding_gzip(cache_dir, tmp_path, tls_server):
    url = tls_server(truncate=False, gzip=True)
    weight = make_weight({"https": url})
    path = fetch("w", weight, cache_dir, tmp_path)
    assert sha256_file(path) == PAYLOAD_SHA

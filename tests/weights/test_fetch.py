import contextlib
import hashlib
import http.server
import threading
import time

import pytest

from frcnn_pipeline.weights import WeightsFetchError, fetch_weights, resolve_source
from frcnn_pipeline.weights.fetch import cache_path

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /R-50.pkl; `behaviour` scripts failures per request."""

    def do_GET(self):
        server = self.server
        server.requests.append({"path": self.path, "range": self.headers.get("Range")})
        action = server.behaviour.pop(0) if server.behaviour else "ok"
        if self.path != "/R-50.pkl" or action == "404":
            self.send_error(404, "Not Found")
            return
        if action == "500":
            self.send_error(500, "Internal Server Error")
            return
        if action == "slow":
            time.sleep(1.0)
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if action == "cut":  # promise everything, send a third, hang up
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts)
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests, httpd.behaviour = [], []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/R-50.pkl"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _fetch(url, cache, **kwargs):
    return fetch_weights(
        url, cache, progress=False, **{"retries": 2, "backoff_s": 0.0, "timeout_s": 5, **kwargs}
    )


def test_detectron2_scheme_resolves_to_the_public_url():
    assert resolve_source("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == (
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    )


def test_download_is_cached_and_not_fetched_again(server, tmp_path):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    path = _fetch(server.url, tmp_path, sha256=sha)
    assert path == tmp_path / f"127.0.0.1_{server.server_address[1]}" / "R-50.pkl"
    assert path.read_bytes() == PAYLOAD
    assert _fetch(server.url, tmp_path, sha256=sha) == path
    assert len(server.requests) == 1


def test_an_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    server.behaviour = ["cut"]
    path = _fetch(server.url, tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[0]["range"] is None
    assert server.requests[1]["range"] == f"bytes={len(PAYLOAD) // 3}-"
    assert not list(tmp_path.rglob("*.part"))


def test_a_failed_request_is_retried(server, tmp_path):
    server.behaviour = ["500", "500"]
    assert _fetch(server.url, tmp_path).read_bytes() == PAYLOAD
    assert len(server.requests) == 3


def test_retries_run_out_with_a_clear_error_naming_where_to_put_the_file(server, tmp_path):
    server.behaviour = ["500"] * 3
    target = cache_path(server.url, tmp_path)
    with pytest.raises(WeightsFetchError, match=rf"after 3 attempts: .*500.*put it at {target}"):
        _fetch(server.url, tmp_path)


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    with pytest.raises(WeightsFetchError, match=r"sha256 mismatch .* the download was deleted"):
        _fetch(server.url, tmp_path, sha256="0" * 64)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_404_is_a_clear_error_and_not_retried(server, tmp_path):
    url = server.url.replace("R-50.pkl", "R-51.pkl")
    with pytest.raises(WeightsFetchError, match=r"R-51.pkl: HTTP 404 Not Found; check weights.source"):
        _fetch(url, tmp_path)
    assert len(server.requests) == 1


def test_timeout_is_a_clear_error(server, tmp_path):
    server.behaviour = ["slow", "slow"]
    with pytest.raises(WeightsFetchError, match=r"after 2 attempts: timed out after 0.2s"):
        _fetch(server.url, tmp_path, timeout_s=0.2, retries=1)
    assert not cache_path(server.url, tmp_path).exists()


def test_unreachable_host_says_how_to_work_offline(tmp_path):
    # Port 9 on loopback: nothing listens, so the connection is refused at once.
    with pytest.raises(WeightsFetchError, match=r"offline, download the file elsewhere and put it at"):
        _fetch("http://127.0.0.1:9/R-50.pkl", tmp_path, retries=0)


def test_a_local_path_is_used_as_is_and_a_missing_one_is_explained(tmp_path):
    local = tmp_path / "R-50.pkl"
    local.write_bytes(b"x")
    assert _fetch(str(local), tmp_path / "cache") == local
    with pytest.raises(WeightsFetchError, match=r"'nope\.pkl' is neither a URL nor an existing file"):
        _fetch("nope.pkl", tmp_path)

"""The web app on a clinic network (issue 25): the token, the Origin/Host check, the headers on
every response, uploads kept in memory, the bounded work gate (503 + Retry-After), and the real
server's timeouts, connection cap and one-line logs (`edge-infer serve` in a subprocess on
127.0.0.1)."""

from __future__ import annotations

import io
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks.load import Server, served
from edge_infer.classifier import Classifier
from edge_infer.cli import main
from edge_infer.splits import split_files
from edge_infer.web import serving
from edge_infer.web.app import QUEUE_PER_WORKER, create_app
from edge_infer.web.limits import Busy, WorkGate
from edge_infer.web.serving import LogRateLimit

TOKEN = "correct-horse-battery-staple-25"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SERVER_START_S = 60.0
HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 1.0, 2.0


@pytest.fixture(scope="module")
def scan(busi_root: Path) -> Path:
    return busi_root / split_files("test")[0].file


@pytest.fixture(scope="module")
def token_client(manifest: dict) -> Iterator[TestClient]:
    with TestClient(create_app(workers=1, token=TOKEN)) as client:
        yield client


@pytest.fixture(scope="module")
def open_client(manifest: dict) -> Iterator[TestClient]:
    with TestClient(create_app(workers=1, allowed_hosts=["scanner-room.example"])) as client:
        yield client


def upload(path: Path) -> dict:
    return {"file": (path.name, path.read_bytes(), "image/png")}


# --- the token -------------------------------------------------------------------------------


def test_the_api_needs_the_token(token_client: TestClient, scan: Path,
                                 classifier: Classifier) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"},
                    {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        response = token_client.post("/predict", files=upload(scan), headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert "access token" in response.json()["detail"]
    assert token_client.get("/model").status_code == 401
    assert token_client.get("/model", headers=BEARER).status_code == 200
    response = token_client.post("/predict", files=upload(scan), headers=BEARER)
    assert response.status_code == 200, response.text
    record = classifier.predict(scan).to_dict()
    assert response.json() == {"file": scan.name, **record}


def test_the_page_and_health_stay_open_and_say_a_token_is_needed(
        token_client: TestClient) -> None:
    for path in ("/", "/static/app.js", "/docs", "/openapi.json"):
        assert token_client.get(path).status_code == 200, path
    assert token_client.get("/healthz").json()["token_required"] is True


def test_the_page_sends_the_token_it_keeps() -> None:
    """app.js keeps the typed token in localStorage and sends it on every API call."""
    script = (Path(create_app.__code__.co_filename).parent / "static" / "app.js").read_text()
    assert 'localStorage.setItem(TOKEN_KEY' in script
    assert script.count("headers: authHeaders()") == 2  # /predict and /model


def test_a_short_token_is_refused_before_serving(manifest: dict) -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(token="short")
    result = CliRunner().invoke(main, ["serve"], env={"EDGE_INFER_TOKEN": "short"})
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output


@pytest.mark.parametrize(("host", "token", "warned"), [
    ("0.0.0.0", None, True), ("0.0.0.0", TOKEN, False), ("127.0.0.1", None, False)])
def test_serving_beyond_loopback_without_a_token_warns(manifest: dict,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       host: str, token: str | None,
                                                       warned: bool) -> None:
    started = []
    monkeypatch.setattr(serving, "serve_app", lambda app, *args, **kw: started.append(args))
    env = {"EDGE_INFER_TOKEN": token} if token else {"EDGE_INFER_TOKEN": ""}
    result = CliRunner().invoke(main, ["serve", "--host", host, "--workers", "1"], env=env)
    assert result.exit_code == 0, result.output
    assert started == [(host, 8000)]
    assert ("warning: listening on 0.0.0.0 without a token" in result.stderr) == warned


# --- Origin / Host ---------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "status"), [
    ({"Origin": "http://evil.example", "Host": "127.0.0.1:8000"}, 403),
    ({"Origin": "http://127.0.0.1:9999", "Host": "127.0.0.1:8000"}, 403),
    ({"Origin": "http://evil.example:8000", "Host": "evil.example:8000"}, 403),  # rebinding
    ({"Sec-Fetch-Site": "cross-site", "Host": "127.0.0.1:8000"}, 403),
    ({"Origin": "null", "Host": "127.0.0.1:8000"}, 403),
    ({"Origin": "http://127.0.0.1:8000", "Host": "127.0.0.1:8000"}, 200),
    ({"Origin": "http://scanner-room.example:8000", "Host": "scanner-room.example:8000"}, 200),
    ({"Origin": "http://localhost:8000", "Host": "localhost:8000",
      "Sec-Fetch-Site": "same-origin"}, 200),
    ({}, 200),  # curl and scripts send no Origin
], ids=["other-site", "other-port", "dns-rebinding", "sec-fetch", "null-origin", "same-origin",
        "allowed-host", "localhost", "no-origin"])
def test_cross_origin_posts_are_refused_without_a_token(open_client: TestClient, scan: Path,
                                                        headers: dict, status: int) -> None:
    response = open_client.post("/predict", files=upload(scan), headers=headers)
    assert response.status_code == status, response.text
    if status == 403:
        assert "refused" in response.json()["detail"] or "host name" in response.json()["detail"]


def test_a_cross_origin_form_post_is_refused_before_its_body_is_read(
        open_client: TestClient, monkeypatch: pytest.MonkeyPatch, scan: Path) -> None:
    def never(*args: object) -> None:
        raise AssertionError("the refused upload was decoded")
    monkeypatch.setattr(open_client.app.state.pool, "predict", never)
    response = open_client.post("/predict", files=upload(scan),
                                headers={"Origin": "http://evil.example"})
    assert response.status_code == 403


# --- headers, memory, the gate ---------------------------------------------------------------


def test_security_headers_on_every_response(token_client: TestClient, scan: Path) -> None:
    responses = [token_client.get(path) for path in ("/", "/healthz", "/static/app.js",
                                                     "/nowhere", "/docs", "/model")]
    responses[3] = token_client.get("/nowhere", headers=BEARER)
    responses.append(token_client.post("/predict", files={"file": ("x.png", b"not an image")},
                                       headers=BEARER))
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 200, 401, 415]
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"


def test_uploads_stay_in_memory(open_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3 MB upload (Starlette spools anything over 1 MiB to disk by default)."""
    noise = np.random.default_rng(25).integers(0, 256, (1800, 1800), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, format="PNG", compress_level=0)
    assert out.tell() > 3 * 2**20

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was written to a temporary file")
    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    response = open_client.post("/predict", files={"file": ("big.png", out.getvalue())})
    assert response.status_code == 200, response.text


def test_the_gate_lets_slots_work_queue_wait_and_refuses_the_rest() -> None:
    gate, release, started = WorkGate(slots=1, queue=1, wait_s=5.0), threading.Event(), []

    def hold() -> str:
        started.append(1)
        release.wait(5)
        return "done"

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(gate.run, hold)
        while not started:
            time.sleep(0.01)
        second = pool.submit(gate.run, lambda: "queued")
        time.sleep(0.2)  # the second is waiting for the slot
        with pytest.raises(Busy, match="busy"):
            gate.run(lambda: "refused")
        release.set()
        assert (first.result(5), second.result(5)) == ("done", "queued")
    with pytest.raises(Busy, match="no slot freed within 0.1 s"):
        blocked = WorkGate(slots=1, queue=2, wait_s=0.1)
        blocked._free.acquire()
        blocked.run(lambda: "never")


def test_a_full_queue_is_503_with_retry_after(open_client: TestClient, scan: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker busy and its queue full: the next concurrent upload gets 503."""
    release = threading.Event()
    pool = open_client.app.state.pool
    real = pool.predict
    monkeypatch.setattr(pool, "predict",
                        lambda *args: (release.wait(30), real(*args))[1])
    with ThreadPoolExecutor(1 + QUEUE_PER_WORKER) as threads:
        held = [threads.submit(open_client.post, "/predict", files=upload(scan))
                for _ in range(1 + QUEUE_PER_WORKER)]
        time.sleep(2.0)
        refused = open_client.post("/predict", files=upload(scan))
        release.set()
        statuses = [f.result(60).status_code for f in held]
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "5" and "busy" in refused.json()["detail"]
    assert statuses == [200] * (1 + QUEUE_PER_WORKER)


# --- the real server: timeouts, connection cap, logs --------------------------------------


@pytest.fixture(scope="module")
def server(manifest: dict) -> Iterator[Server]:
    with served("int8", 1, 1, time.monotonic() + SERVER_START_S,
                ("--header-timeout", str(HEADER_TIMEOUT_S), "--body-timeout",
                 str(BODY_TIMEOUT_S), "--max-connections", "8")) as running:
        yield running


def _connect(server: Server) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (it sent nothing on it)."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (10 s at most)."""
    chunks, deadline = [], time.monotonic() + 10
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    raise AssertionError("the server kept the connection open")


def test_a_client_slow_with_its_headers_is_cut(server: Server) -> None:
    with _connect(server) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: unfinished
        answer = _read_all(sock)
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert HEADER_TIMEOUT_S * 0.9 <= took < HEADER_TIMEOUT_S + 3


def test_a_client_slow_with_its_body_is_cut(server: Server) -> None:
    with _connect(server) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                     b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n")
        answer = _read_all(sock)
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"upload too slow" in answer
    assert BODY_TIMEOUT_S * 0.9 <= took < BODY_TIMEOUT_S + 3


def test_idle_connections_over_the_cap_make_room_for_a_request(server: Server,
                                                               scan: Path) -> None:
    """Twenty connections that never send a byte against a cap of 8: a real request still gets
    its answer at once, and the log stays one line per event."""
    idle = [_connect(server) for _ in range(20)]
    try:
        time.sleep(0.3)
        assert sum(_closed(sock) for sock in idle) >= 12  # at most 8 left open
        start = time.monotonic()
        response = httpx.post(f"{server.url}/predict", files=upload(scan), timeout=10,
                              trust_env=False)
        assert response.status_code == 200, response.text
        assert time.monotonic() - start < HEADER_TIMEOUT_S  # before any header timeout
    finally:
        for sock in idle:
            sock.close()
    log = server.log.read_text()
    assert "Traceback" not in log and "Too many open files" not in log


def test_log_lines_are_rate_limited_and_one_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(LogRateLimit(per_minute=10))
    logger = logging.Logger("rate-limit-test")
    logger.addHandler(handler)
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        for _ in range(500):
            logger.error("socket.accept() out of system resource\nsecond line", exc_info=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11
    assert lines[0] == ("socket.accept() out of system resource second line: OSError: "
                        "[Errno 24] Too many open files")
    assert lines[-1].startswith("log rate limit (10 lines a minute) reached")



def test_request_bodies_held_at_once_are_budgeted() -> None:
    """A body that would take the bytes held by all requests over the budget is 503; the
    budget frees up when a request ends."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from edge_infer.web.body_limit import BodySizeLimit

    release = threading.Event()

    async def hold(request: Request) -> PlainTextResponse:
        body = await request.body()
        while not release.is_set():
            await asyncio.sleep(0.01)
        return PlainTextResponse(str(len(body)))

    app = Starlette(routes=[Route("/", hold, methods=["POST"])])
    app.add_middleware(BodySizeLimit, max_bytes=4000, message="too large", budget_bytes=5000)
    with TestClient(app) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/", content=bytes(3000))
        time.sleep(0.5)
        refused = client.post("/", content=bytes(3000))
        release.set()
        assert first.result(10).text == "3000"
        assert client.post("/", content=bytes(3000)).text == "3000"  # the budget freed up
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"


def test_other_libraries_logs_share_the_budget(capfd: pytest.CaptureFixture) -> None:
    """python-multipart warns once per malformed form, asyncio once per failed accept(): the
    served configuration routes them through the rate-limited handlers."""
    serving.server_config(None, "127.0.0.1", 8000)
    for _ in range(200):
        logging.getLogger("python_multipart.multipart").warning("Found invalid character")
    logging.getLogger("asyncio").error("socket.accept() out of system resource")
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == serving.LOG_LINES_PER_MINUTE + 1
    assert "log rate limit" in lines[-1]

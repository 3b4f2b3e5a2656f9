"""The web app: the same answers as the Classifier and the CLI, its limits and error statuses,
concurrency over the classifier pool, and an upload through headless Chromium.

Model-agnostic: it runs against whatever models are shipped and skips if there are none."""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient
from required import missing

from edge_infer.classifier import Classifier, Result
from edge_infer.cli import main
from edge_infer.decision import Decision, Mode, decide
from edge_infer.ood import OodPolicy, ood_fields
from edge_infer.spec import CLASS_NAMES
from edge_infer.splits import split_files
from edge_infer.web import serving
from edge_infer.web.app import FORM_OVERHEAD_BYTES, STATIC_DIR, create_app

SMALL_LIMIT = 2000  # bytes: every BUSI image is larger
SERVER_START_SECONDS = 10
BROWSER_WAIT_SECONDS = 30
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1000,1150")
DECISION_FIELDS = set(Decision.__dataclass_fields__)
PAGE_TOKEN = "a-token-typed-into-the-page"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(busi_root: Path) -> list[Path]:
    """Four BUSI test-split images: the first of each class and a second benign one."""
    rows = split_files("test")
    chosen = [next(r for r in rows if r.label == label) for label in CLASS_NAMES]
    chosen.append([r for r in rows if r.label == "benign"][1])
    return [busi_root / row.file for row in chosen]


@pytest.fixture(scope="module")
def client(manifest: dict) -> Iterator[TestClient]:
    with TestClient(create_app("int8", threads=1, workers=2)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def small_client(manifest: dict) -> Iterator[TestClient]:
    with TestClient(create_app(max_upload_bytes=SMALL_LIMIT)) as test_client:
        yield test_client


@contextmanager
def running(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_SECONDS
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(SERVER_START_SECONDS)
        sock.close()


@pytest.fixture(scope="module")
def live_url(manifest: dict) -> Iterator[str]:
    with running(create_app(workers=2)) as url:
        yield url


@pytest.fixture(scope="module")
def small_live_url(manifest: dict) -> Iterator[str]:
    with running(create_app(max_upload_bytes=SMALL_LIMIT)) as url:
        yield url


def post(client: TestClient | httpx.Client, path: Path, data: dict | None = None) -> httpx.Response:
    return client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")},
                       data=data or {})


def expected(classifier: Classifier, path: Path, mode: Mode = "argmax",
             threshold: float | None = None, ood_policy: OodPolicy = "refuse") -> dict:
    """What `edge-infer --json` says about `path`, named as the upload is."""
    record = classifier.predict(path, mode, threshold, ood_policy).to_dict()
    return {"file": path.name, **record}


# --- no model needed -----------------------------------------------------------------------


def test_the_page_needs_nothing_from_outside() -> None:
    files = {path.name: path.read_text() for path in STATIC_DIR.iterdir()}
    assert {"index.html", "app.js", "style.css"} <= set(files)
    for name, text in files.items():
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
    assert "not a diagnosis" in files["index.html"]


@pytest.mark.parametrize("missing", ["uvicorn", "fastapi_offline"])
def test_serve_without_the_extra_is_one_error_line(monkeypatch: pytest.MonkeyPatch,
                                                   missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` fail
    monkeypatch.delitem(sys.modules, "edge_infer.web.app", raising=False)  # imported again
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and 'pip install ".[serve]"' in result.stderr
    assert f"{missing} is missing" in result.stderr


# --- the API -------------------------------------------------------------------------------


def test_results_equal_the_classifier_and_the_cli(client: TestClient, classifier: Classifier,
                                                  images: list[Path]) -> None:
    answers = []
    for path in images:
        response = post(client, path)
        assert response.status_code == 200, response.text
        assert response.json() == expected(classifier, path)
        answers.append(response.json())
    cli = CliRunner().invoke(main, ["classify", "--json", "--quiet", "--threads", "1",
                                    *map(str, images)])
    assert cli.exit_code == 0, cli.output
    cli_results = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [{**r, "file": Path(r["file"]).name} for r in cli_results] == answers


def test_a_refused_upload_gets_no_heatmap(client: TestClient, classifier: Classifier,
                                          not_ultrasound: Path) -> None:
    """No heat-map for a withheld label; the record is still the classifier's (prediction
    null, what the model computed kept); --ood warn labels it and draws the map."""
    if not classifier.has_heatmap:
        missing(f"{classifier.entry.key} gives no heat-map (no feature-map output)")
    refused = post(client, not_ultrasound, {"heatmap": "true"}).json()
    assert refused == expected(classifier, not_ultrasound)
    assert refused["prediction"] is None and refused["argmax_prediction"] in CLASS_NAMES
    warned = post(client, not_ultrasound, {"heatmap": "true", "ood": "warn"}).json()
    heatmap = warned.pop("heatmap")
    assert warned == expected(classifier, not_ultrasound, ood_policy="warn")
    assert heatmap["label"] == warned["prediction"] == warned["argmax_prediction"]
    assert heatmap["png"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("threshold", [0.0, 0.37, 1.0])
def test_threshold_applies_the_decision_rule(client: TestClient, images: list[Path],
                                             threshold: float) -> None:
    for path in images[:2]:
        probs = post(client, path).json()["probs"]
        rule = decide([probs[c] for c in CLASS_NAMES], "high-sensitivity", threshold).to_dict()
        for fields in ({"threshold": str(threshold)},
                       {"mode": "high-sensitivity", "threshold": str(threshold)}):
            result = post(client, path, fields).json()
            assert {k: result[k] for k in DECISION_FIELDS} == rule
        if threshold == 0.0:
            assert rule["prediction"] == "malignant"


def test_high_sensitivity_defaults_to_the_models_threshold(
        client: TestClient, classifier: Classifier, images: list[Path]) -> None:
    path = images[0]
    result = post(client, path, {"mode": "high-sensitivity"}).json()
    assert result == expected(classifier, path, "high-sensitivity")
    assert result["threshold"] == classifier.threshold
    assert post(client, path, {"mode": "argmax"}).json() == expected(classifier, path)


@pytest.mark.parametrize("fields", [
    {"threshold": "1.5"}, {"threshold": "-0.1"}, {"threshold": "nan"}, {"threshold": "abc"},
    {"mode": "bogus"}, {"mode": "argmax", "threshold": "0.3"},
])
def test_bad_form_fields_are_422(client: TestClient, images: list[Path], fields: dict) -> None:
    response = post(client, images[0], fields)
    assert response.status_code == 422 and response.json()["detail"]


def test_a_wrong_field_name_is_422(client: TestClient, images: list[Path]) -> None:
    response = client.post("/predict", files={"image": ("scan.png", images[0].read_bytes())})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


@pytest.mark.parametrize(("make", "status", "words"), [
    (lambda png: b"just some text\n", 415, "not an image"),
    (lambda png: b"", 422, "empty"),
    (lambda png: png[: len(png) // 2], 422, "truncated"),
])
def test_unreadable_uploads_get_a_clear_message(client: TestClient, images: list[Path], make,
                                                status: int, words: str) -> None:
    response = client.post("/predict", files={"file": ("upload", make(images[0].read_bytes()))})
    assert response.status_code == status
    assert words in response.json()["detail"]


def test_uploads_over_the_limit_are_413(small_client: TestClient, images: list[Path]) -> None:
    def upload(size: int) -> httpx.Response:
        return small_client.post("/predict", files={"file": ("a", b"x" * size)})

    body_over_the_limit = upload(SMALL_LIMIT + FORM_OVERHEAD_BYTES)  # refused by Content-Length
    file_over_the_limit = upload(SMALL_LIMIT + 1)  # the body is within the form allowance
    for response in (body_over_the_limit, file_over_the_limit, post(small_client, images[0])):
        assert response.status_code == 413
        assert "limit is 1.95 KiB" in response.json()["detail"]
    assert upload(SMALL_LIMIT).status_code == 415  # within the limit: read, and not an image


def _read_status(sock: socket.socket) -> str:
    return sock.recv(4096).split(b"\r\n", 1)[0].decode()


def test_413_comes_before_the_body_is_read(small_live_url: str) -> None:
    port = int(small_live_url.rsplit(":", 1)[1])
    head = ("POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # declares 1 GB
        sock.sendall(f"{head}Content-Length: 1000000000\r\n\r\n".encode())
        assert "413" in _read_status(sock)
    part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
            + b"x" * (SMALL_LIMIT + FORM_OVERHEAD_BYTES))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # chunked, unfinished
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")  # no final 0-chunk
        assert "413" in _read_status(sock)


def test_health_model_and_openapi(client: TestClient, manifest: dict) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["workers"] == 2
    assert client.get("/model").json() == {"key": health["model"],
                                           **manifest["models"][health["model"]]}
    schema = client.get("/openapi.json").json()
    ok = schema["paths"]["/predict"]["post"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/Prediction")
    fields = schema["components"]["schemas"]["Prediction"]["properties"]
    assert "Heatmap" in str(fields.pop("heatmap"))  # only in answers asking for it
    for computed in ("argmax_prediction", "top2"):  # kept when refused: say it is no label
        assert "for inspection only" in fields[computed]["description"], computed
    assert set(fields) == DECISION_FIELDS | {"file", "model", "temperature", "profile",
                                             *ood_fields(None, "refuse"), "notes"}
    assert {"413", "415", "422"} <= set(schema["paths"]["/predict"]["post"]["responses"])
    assert client.get("/docs").status_code == 200


def test_the_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "not a diagnosis" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_the_docs_page_needs_nothing_from_outside(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "://" not in page.text and "//cdn" not in page.text
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {url.rsplit(".", 1)[-1] for url in urls} == {"js", "css", "png"}
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert "url: '/openapi.json'" in page.text
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc would fetch its logo from a CDN


# --- concurrency ---------------------------------------------------------------------------


def test_parallel_requests_equal_single_ones_and_never_share_an_interpreter(
        live_url: str, images: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with httpx.Client(base_url=live_url, timeout=60) as http:
        single = [post(http, path).json() for path in images]
    busy: set[int] = set()
    shared: list[int] = []
    lock = threading.Lock()
    predict = Classifier.predict  # every request's interpreter call

    def exclusive(self: Classifier, *args, **kwargs) -> Result:
        with lock:
            (shared.append if id(self) in busy else busy.add)(id(self))
        try:
            return predict(self, *args, **kwargs)
        finally:
            with lock:
                busy.discard(id(self))

    monkeypatch.setattr(Classifier, "predict", exclusive)

    def ask(i: int) -> dict:
        with httpx.Client(base_url=live_url, timeout=60) as http:
            return post(http, images[i % len(images)]).json()

    with ThreadPoolExecutor(16) as executor:
        answers = list(executor.map(ask, range(16)))
    assert answers == [single[i % len(images)] for i in range(16)]
    assert not shared


def test_inference_does_not_block_the_event_loop(live_url: str, images: list[Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()
    predict = Classifier.predict

    def held(self: Classifier, *args, **kwargs) -> Result:
        entered.set()
        release.wait(SERVER_START_SECONDS)
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(Classifier, "predict", held)
    with ThreadPoolExecutor(1) as executor, httpx.Client(base_url=live_url, timeout=5) as http:
        pending = executor.submit(post, http, images[0])
        assert entered.wait(SERVER_START_SECONDS)
        assert http.get("/healthz").status_code == 200  # answered while invoke is held
        release.set()
        assert pending.result().status_code == 200


# --- the serve command ---------------------------------------------------------------------


def test_serve_builds_the_app_from_its_options(manifest: dict,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(serving, "serve_app",
                        lambda app, *args, **kwargs: calls.append((app, args, kwargs)))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = CliRunner().invoke(main, ["serve", "--port", str(port), "--workers", "3",
                                       "--max-upload-mb", "2", "--max-connections", "20",
                                       "--header-timeout", "4"], env={"EDGE_INFER_TOKEN": ""})
    assert result.exit_code == 0, result.output
    (app, args, kwargs), = calls
    assert args == ("127.0.0.1", port)
    assert kwargs == {"max_connections": 20, "header_timeout_s": 4.0}
    health = TestClient(app).get("/healthz").json()
    assert (health["workers"], health["max_upload_bytes"]) == (3, 2 * 2**20)


# --- a real browser ------------------------------------------------------------------------


def _chromium() -> tuple[str, str]:
    """Paths of the Chromium binary and its driver, or a skip."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("no chromium/chromedriver: apt-get install -y chromium chromium-driver")
    return browser, driver


def _shown(driver) -> dict:
    """What the result card says, in the API's terms."""
    from selenium.webdriver.common.by import By

    def text(element_id: str) -> str:
        return driver.find_element(By.ID, element_id).text

    return {"prediction": text("prediction").lower(),
            "forced_malignant": text("forced") == "yes", "uncertain": text("uncertain") == "yes",
            "bars": len(driver.find_elements(By.CSS_SELECTOR, "#bars .bar-row"))}


def _api_view(result: dict) -> dict:
    return {"prediction": result["prediction"], "forced_malignant": result["forced_malignant"],
            "uncertain": result["uncertain"], "bars": len(result["probs"])}


@contextmanager
def _headless_chromium(tmp_path: Path) -> Iterator:
    """A selenium driver of headless Chromium with its profile in `tmp_path`, or a skip."""
    browser, driver_path = _chromium()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_in_headless_chromium(live_url: str, images: list[Path], tmp_path: Path) -> None:
    with _headless_chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(driver, BROWSER_WAIT_SECONDS)
        path = images[1]
        driver.get(live_url)
        driver.find_element(By.ID, "file").send_keys(str(path.resolve()))
        result = driver.find_element(By.ID, "result")
        wait.until(lambda _: result.is_displayed()
                   and result.get_attribute("data-file") == path.name)
        argmax = _shown(driver)
        driver.save_screenshot(str(tmp_path / "web_app.png"))
        driver.find_element(By.CSS_SELECTOR, 'input[value="high-sensitivity"]').click()
        driver.find_element(By.ID, "threshold").send_keys("0", Keys.TAB)
        wait.until(lambda _: "threshold 0.000" in driver.find_element(By.ID, "meta").text)
        forced = _shown(driver)
        driver.save_screenshot(str(tmp_path / "web_app_high_sensitivity.png"))
    with httpx.Client(base_url=live_url, timeout=60) as http:
        assert argmax == _api_view(post(http, path).json())
        assert forced == _api_view(post(http, path, {"threshold": "0"}).json())
    assert forced["prediction"] == "malignant"
    assert (tmp_path / "web_app.png").stat().st_size > 0


def test_docs_render_the_typed_api_in_headless_chromium(live_url: str, tmp_path: Path) -> None:
    with _headless_chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(driver, BROWSER_WAIT_SECONDS)
        driver.get(f"{live_url}/docs")
        predict = wait.until(lambda _: driver.find_element(
            By.CSS_SELECTOR, '.opblock-post .opblock-summary-path[data-path="/predict"]'))
        assert predict.text == "/predict" and predict.is_displayed()
        schemas = {title.text for title in driver.find_elements(
            By.CSS_SELECTOR, "section.models .json-schema-2020-12__title")}
        assert {"Prediction", "ErrorMessage", "Body_predict_predict_post"} <= schemas
        predict.click()  # opens the operation: its form fields and typed responses
        wait.until(lambda _: "multipart/form-data" in driver.find_element(
            By.CSS_SELECTOR, ".opblock-post .opblock-body").text)
        body = driver.find_element(By.CSS_SELECTOR, ".opblock-post .opblock-body").text
        assert all(word in body for word in ("file", "mode", "threshold", "413", "415", "422"))
        driver.save_screenshot(str(tmp_path / "docs.png"))
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(entry => entry.name)")
    assert f"{live_url}/openapi.json" in fetched
    assert all(url.startswith(f"{live_url}/") for url in fetched), fetched
    assert (tmp_path / "docs.png").stat().st_size > 0


def test_heatmap_in_headless_chromium(live_url: str, images: list[Path], classifier: Classifier,
                                      tmp_path: Path) -> None:
    """Ticking the heat-map box shows the upload, at its own size, with the map of the
    predicted class; unticking hides it."""
    if not classifier.has_heatmap:
        missing("the shipped int8 model has no feature-map output (run python -m busi convert)")
    from PIL import Image

    with _headless_chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(driver, BROWSER_WAIT_SECONDS)
        path = images[2]
        driver.get(live_url)
        driver.find_element(By.ID, "heatmap").click()
        driver.find_element(By.ID, "file").send_keys(str(path.resolve()))
        figure = driver.find_element(By.ID, "heatmap-figure")
        image = driver.find_element(By.ID, "heatmap-image")
        natural = "return [arguments[0].naturalWidth, arguments[0].naturalHeight]"
        wait.until(lambda _: figure.is_displayed()
                   and driver.execute_script(natural, image)[0] > 0)
        size = tuple(driver.execute_script(natural, image))
        label = driver.find_element(By.ID, "heatmap-label").text
        prediction = driver.find_element(By.ID, "prediction").text.lower()
        driver.save_screenshot(str(tmp_path / "web_app_heatmap.png"))
        driver.find_element(By.ID, "heatmap").click()
        wait.until(lambda _: not figure.is_displayed())
    assert size == Image.open(path).size
    assert label == prediction == classifier.predict(path).prediction


def test_not_ultrasound_in_headless_chromium(live_url: str, classifier: Classifier,
                                             not_ultrasound: Path, tmp_path: Path) -> None:
    """An image that is not breast ultrasound: the page says so plainly and gives no label;
    ticking 'label anyway' shows the label under the same warning."""
    path = not_ultrasound
    with _headless_chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(driver, BROWSER_WAIT_SECONDS)
        driver.get(live_url)
        driver.find_element(By.ID, "file").send_keys(str(path))
        alert = driver.find_element(By.ID, "ood-alert")
        prediction = driver.find_element(By.ID, "prediction")
        wait.until(lambda _: alert.is_displayed() and prediction.text)
        refused = (alert.text, prediction.text)
        driver.save_screenshot(str(tmp_path / "web_app_not_ultrasound.png"))
        driver.find_element(By.ID, "ood-warn").click()
        wait.until(lambda _: prediction.text != "No label")
        warned = (alert.text, prediction.text.lower())
    api = expected(classifier, path, ood_policy="warn")
    assert "does not look like a breast ultrasound" in refused[0]
    assert "should not be trusted" in refused[0] and refused[1] == "No label"
    assert "labelled anyway" in warned[0] and warned[1] == api["prediction"]


def test_a_scan_unlike_the_training_hospitals_in_headless_chromium(
        live_url: str, classifier: Classifier, busi_root: Path, tmp_path: Path) -> None:
    """A real BUSI validation scan the shipped check warns about: the page labels it and says,
    in a plain sentence, to validate the model locally."""
    warned = next((busi_root / row.file for row in split_files("val")
                   if classifier.predict(busi_root / row.file).domain_warning), None)
    assert warned is not None, "the shipped check warns about no BUSI validation scan"
    with _headless_chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(live_url)
        driver.find_element(By.ID, "file").send_keys(str(warned.resolve()))
        alert = driver.find_element(By.ID, "ood-alert")
        prediction = driver.find_element(By.ID, "prediction")
        WebDriverWait(driver, BROWSER_WAIT_SECONDS).until(
            lambda _: alert.is_displayed() and prediction.text)
        shown = (alert.text, prediction.text.lower())
    assert shown[0].startswith("Labelled, but the scan differs from the training hospitals'")
    assert "edge-infer evaluate" in shown[0]
    assert shown[1] == classifier.predict(warned).prediction


def test_the_page_asks_for_the_token_once_in_headless_chromium(manifest: dict,
                                                               images: list[Path],
                                                               tmp_path: Path) -> None:
    """Upload refused without the token (edge_infer/web/guard.py); typed once, the upload is
    classified, and after a reload the page still has it (localStorage)."""
    scan = images[0]
    with running(create_app(workers=1, token=PAGE_TOKEN)) as url, \
            _headless_chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(driver, 30)
        driver.get(url)
        field = driver.find_element(By.ID, "token-field")
        wait.until(lambda _: field.is_displayed())
        driver.find_element(By.ID, "file").send_keys(str(scan.resolve()))
        error = driver.find_element(By.ID, "error")
        wait.until(lambda _: "access token" in error.text)
        driver.find_element(By.ID, "token").send_keys(PAGE_TOKEN, Keys.TAB)
        result = driver.find_element(By.ID, "result")
        wait.until(lambda _: result.is_displayed() and result.get_attribute("data-file")
                   == scan.name)
        driver.refresh()
        wait.until(lambda _: driver.find_element(By.ID, "token").get_attribute("value")
                   == PAGE_TOKEN)
        driver.save_screenshot(str(tmp_path / "token.png"))

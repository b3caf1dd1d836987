"""The search page in a real browser: uvicorn on 127.0.0.1, headless Debian Chromium driven over the W3C
WebDriver protocol (chromedriver's HTTP API, spoken with httpx, so no extra Python package is needed).

Needs the Debian packages ``chromium`` and ``chromium-driver`` (CI installs them); without them the test fails
with the install line rather than skipping, so a missing browser is never mistaken for a pass."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servekit import FakeModel, png_b64, solid, tone, wav_b64

pytestmark = pytest.mark.browser

INSTALL = "apt-get install -y chromium chromium-driver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
KEY = "browser-key"
RED, BLUE = solid((230, 20, 20)), solid((20, 40, 230))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, RuntimeError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class WebDriver:
    """The few W3C WebDriver commands the test needs."""

    def __init__(self, base: str, session: str):
        self.http = httpx.Client(base_url=f"{base}/session/{session}", timeout=30)

    def cmd(self, method: str, path: str, body: dict | None = None) -> Any:
        r = self.http.request(method, path, json=body if body is not None else ({} if method == "POST" else None))
        value = r.json().get("value")
        if r.status_code != 200:
            raise RuntimeError(f"webdriver {method} {path}: {value}")
        return value

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def find_all(self, css: str) -> list[str]:
        return [e[ELEMENT] for e in self.cmd("POST", "/elements", {"using": "css selector", "value": css})]

    def find(self, css: str) -> str:
        found = self.find_all(css)
        if not found:
            raise RuntimeError(f"no element {css!r}")
        return found[0]

    def type(self, el: str, text: str) -> None:
        self.cmd("POST", f"/element/{el}/value", {"text": text})

    def clear(self, el: str) -> None:
        self.cmd("POST", f"/element/{el}/clear")

    def click(self, el: str) -> None:
        self.cmd("POST", f"/element/{el}/click")

    def text(self, el: str) -> str:
        return str(self.cmd("GET", f"/element/{el}/text"))

    def run(self, script: str, *args: Any) -> Any:
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from polymodal.serve import ServeSettings, create_app
    from polymodal.serve.server import bind, make_server, url_of

    root = tmp_path_factory.mktemp("serve")
    settings = ServeSettings(api_key=KEY)
    app = create_app(FakeModel(), root=root, collection=root / "main", settings=settings)
    sock = bind("127.0.0.1", 0)  # the server `polymodal serve` runs, with its connection limits
    listening = threading.Event()
    srv = make_server(app, settings, log_level="warning", on_listening=listening.set)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(listening.is_set, what="uvicorn to start")
    base = url_of(sock, "127.0.0.1").rstrip("/")
    assert httpx.post(f"{base}/v1/collections/empty", headers={"X-API-Key": KEY}).status_code == 201
    items = [{"id": 1, "text": "red circle", "image": png_b64(RED), "embed": "text"},
             {"id": 2, "text": "blue square", "image": png_b64(BLUE), "embed": "text"},
             {"id": 3, "text": "green triangle whistles", "audio": wav_b64(tone(660), 16000), "embed": "text"},
             {"id": 11, "text": "a blue photo", "image": png_b64(BLUE)}]  # embedded by its image
    r = httpx.post(f"{base}/v1/collections/main/items", json={"items": items}, headers={"X-API-Key": KEY})
    assert r.status_code == 200, r.text
    yield base
    srv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail(f"the browser test needs Debian chromium and chromedriver: {INSTALL}", pytrace=False)
    port = free_port()
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/status").json()["value"]["ready"], what="chromedriver")
        profile = tmp_path_factory.mktemp("chromium-profile")
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
                "--window-size=1200,900", f"--user-data-dir={profile}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": chromium, "args": args}}}}
        r = httpx.post(f"{base}/session", json=caps, timeout=60)
        assert r.status_code == 200, r.text
        session = r.json()["value"]["sessionId"]
        wd = WebDriver(base, session)
        yield wd
        httpx.delete(f"{base}/session/{session}", timeout=30)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def hits(wd: WebDriver) -> list[str]:
    return wd.find_all("#results .hit")


def search_and_wait(wd: WebDriver, before: str) -> list[str]:
    wd.click(wd.find("#go"))
    wait_for(lambda: wd.text(wd.find("#status")) != before and "results" in wd.text(wd.find("#status")),
             what="the search to finish")
    return hits(wd)


def test_text_query_shows_the_expected_item_with_thumbnail(server: str, browser: WebDriver):
    wd = browser
    wd.get(server + "/")
    wait_for(lambda: wd.run("return document.querySelectorAll('#collection option').length") == 2,
             what="the collection list")
    assert wd.run("return document.getElementById('collection').value") == "main"  # the default
    wd.type(wd.find("#q"), "blue square")
    cards = search_and_wait(wd, "")
    assert len(cards) == 4  # k defaults to 10; the collection holds 4 items
    first = cards[0]
    assert wd.cmd("GET", f"/element/{first}/attribute/data-id") == "2"
    assert "blue square" in wd.text(first)
    score = float(wd.text(wd.find("#results .hit .score")))
    assert score == pytest.approx(1.0, abs=1e-3)
    # the thumbnail arrives as a blob and renders
    wait_for(lambda: wd.run("const i = document.querySelector('#results .hit img.thumb');"
                            "return i && i.complete && i.naturalWidth === 32"), what="the thumbnail")


def test_audio_hits_have_play_buttons_and_k_limits_results(server: str, browser: WebDriver):
    wd = browser
    wd.get(server + "/")
    wait_for(lambda: wd.find_all("#collection option"), what="the collection list")
    wd.type(wd.find("#q"), "green triangle whistles")
    wd.run("document.getElementById('k').value = '5';")
    cards = search_and_wait(wd, "")
    assert wd.cmd("GET", f"/element/{cards[0]}/attribute/data-id") == "3"
    assert wd.find_all("#results .hit[data-id='3'] button.play")
    assert not wd.find_all("#results .hit[data-id='2'] button.play")


def test_image_file_query(server: str, browser: WebDriver, tmp_path: Path):
    from PIL import Image

    query = tmp_path / "query.png"
    Image.fromarray(BLUE).save(query)
    wd = browser
    wd.get(server + "/")
    wait_for(lambda: wd.find_all("#collection option"), what="the collection list")
    wd.type(wd.find("#file"), str(query))  # a file input takes the path of a local file
    cards = search_and_wait(wd, "")
    assert wd.cmd("GET", f"/element/{cards[0]}/attribute/data-id") == "11"  # the image-embedded twin
    assert "(image)" in wd.text(wd.find("#status"))


def test_errors_show_in_the_status_line(server: str, browser: WebDriver):
    wd = browser
    wd.get(server + "/")
    wait_for(lambda: wd.find_all("#collection option"), what="the collection list")
    wd.click(wd.find("#go"))
    wait_for(lambda: "type a query" in wd.text(wd.find("#status")), what="the error message")
    assert wd.cmd("GET", f"/element/{wd.find('#status')}/attribute/class") == "error"


def wait_for_hits(wd: WebDriver) -> list[str]:
    wait_for(lambda: "results" in wd.text(wd.find("#status")), what="the search to finish")
    return hits(wd)


def test_a_q_url_runs_its_search_and_a_search_updates_the_url(server: str, browser: WebDriver):
    wd = browser
    wd.get(server + "/?q=blue%20square&k=5")
    cards = wait_for_hits(wd)  # no click: the URL's search runs on load
    assert wd.cmd("GET", f"/element/{cards[0]}/attribute/data-id") == "2"
    assert wd.run("return [document.getElementById('q').value, document.getElementById('k').value]") == \
        ["blue square", "5"]
    q = wd.find("#q")
    wd.clear(q)
    wd.type(q, "red circle")
    wd.run("document.getElementById('k').value = '10';")
    wd.click(wd.find("#go"))
    wait_for(lambda: wd.run("return location.search") == "?q=red+circle", what="the URL to follow the search")
    wait_for(lambda: wd.cmd("GET", f"/element/{hits(wd)[0]}/attribute/data-id") == "1", what="the new results")
    shared = wd.run("return location.href")
    wd.get(server + "/")  # somewhere else, then the shared URL: the same search again
    wait_for(lambda: wd.find_all("#results .hint"), what="the start page")
    wd.get(shared)
    cards = wait_for_hits(wd)
    assert wd.cmd("GET", f"/element/{cards[0]}/attribute/data-id") == "1"
    wd.run("history.back();")  # back to the plain page: the form follows the URL
    wait_for(lambda: wd.run("return document.getElementById('q').value") == "", what="the form to follow the URL")


def test_hints_before_a_search_and_for_an_empty_collection(server: str, browser: WebDriver):
    wd = browser
    wd.get(server + "/")
    wait_for(lambda: "e.g." in wd.text(wd.find("#results")), what="the start hint")
    assert "4 items" in wd.text(wd.find("#results .hint"))
    wd.run("const s = document.getElementById('collection'); s.value = 'empty';"
           "s.dispatchEvent(new Event('change'));")
    wait_for(lambda: "is empty" in wd.text(wd.find("#results")), what="the empty-collection hint")
    assert "POST /v1/collections/empty/items" in wd.text(wd.find("#results .hint"))
    wd.type(wd.find("#q"), "anything")
    wd.click(wd.find("#go"))
    wait_for(lambda: "No results" in wd.text(wd.find("#results")), what="the no-results hint")


def test_api_docs_render_offline(server: str, browser: WebDriver):
    """Swagger UI from the server's own files: this browser reaches no other site, and the page's CSP allows
    none, so the operations render only if nothing comes from a CDN."""
    wd = browser
    wd.get(server + "/docs")
    wait_for(lambda: wd.run("return document.querySelectorAll('.opblock').length") >= 8,
             what="Swagger UI to render the operations")
    assert "/v1/search" in wd.text(wd.find("#swagger-ui"))
    origins = wd.run("return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)")
    assert set(origins) <= {server}, origins

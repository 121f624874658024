"""The page at GET /, driven in headless Chromium over the DevTools protocol."""

import base64
import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_DB, REPO
from tests.test_client import live_server

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO / "docs" / "screenshots" / "predict-page.png"
TEXTS = [
    "I was charged twice for my order, please refund one.",
    "The app crashes every time I open my basket.",
    "My parcel has been stuck in customs for ten days.",
]
EXPECTED = ["billing", "technical", "shipping"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"
)
sync_client = pytest.importorskip("websockets.sync.client", reason="needs the websockets package")


class Browser:
    """One headless Chromium page, spoken to over the Chrome DevTools Protocol."""

    def __init__(self, profile: Path) -> None:
        self.process = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--force-color-profile=srgb",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert self.process.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
        page = next(target for target in targets if target["type"] == "page")
        self.exits = ExitStack()
        self.socket = self.exits.enter_context(
            sync_client.connect(page["webSocketDebuggerUrl"], max_size=None)
        )
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a CDP method and return its result, skipping events."""
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """Poll until `expression` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)
        return value

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )

    def close(self) -> None:
        self.exits.close()
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    # DEMO_HEAD_ON_START trains `demo` from data/demo_support.csv in the background once
    # the server is up; the page needs it, so wait for it.
    with live_server(
        tmp_path_factory.mktemp("web") / "models", API_DB, DEMO_HEAD_ON_START="true"
    ) as url:
        deadline = time.monotonic() + 300
        while "demo" not in httpx.get(f"{url}/health", timeout=5).json()["heads"]:
            assert time.monotonic() < deadline, "the demo head was not trained"
            time.sleep(0.2)
        yield url


@pytest.fixture
def browser(tmp_path) -> Iterator[Browser]:
    opened = Browser(tmp_path / "profile")
    try:
        yield opened
    finally:
        opened.close()


def test_predict_and_embed_from_the_page(server, browser):
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        width=900,
        height=1050,
        deviceScaleFactor=1,
        mobile=False,
    )
    browser.send("Page.enable")
    browser.send("Page.navigate", url=f"{server}/")
    browser.wait_for("document.querySelector('#head option[value=\"demo\"]') !== null")

    # Type the texts, pick the head, click Predict.
    browser.evaluate(
        "document.querySelector('#texts').focus(), document.querySelector('#texts').select()"
    )
    browser.send("Input.insertText", text="\n".join(TEXTS))
    browser.evaluate(
        "(() => { const s = document.querySelector('#head'); s.value = 'demo';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    browser.click("#predict")
    browser.wait_for("document.querySelectorAll('#results article').length === 3")

    assert browser.evaluate("document.querySelector('#error').hidden") is True
    assert browser.evaluate("document.querySelector('#results .meta').textContent") == (
        "Head demo, version 1"
    )
    cards = browser.evaluate(
        "[...document.querySelectorAll('#results article')].map(a => ({"
        " text: a.querySelector('.text').textContent,"
        " label: a.querySelector('.pred').textContent,"
        " bars: a.querySelectorAll('.track').length,"
        " hit: a.querySelector('.fill.hit').parentElement.previousElementSibling.textContent }))"
    )
    assert [card["text"] for card in cards] == TEXTS
    assert [card["label"] for card in cards] == EXPECTED
    assert all(card["bars"] == 4 and card["hit"] == card["label"] for card in cards)

    # Grow the viewport to the whole page so every result card is in the picture.
    height = browser.evaluate("document.documentElement.scrollHeight")
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        width=900,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shot = browser.send("Page.captureScreenshot", format="png")
    SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    assert SCREENSHOT.stat().st_size > 10_000

    # Embed shows the model and vectors; an empty textarea shows an error instead.
    browser.click("#embed")
    browser.wait_for("document.querySelector('#results .vec') !== null")
    assert "dim 384" in browser.evaluate("document.querySelector('#results .meta').textContent")
    browser.evaluate("document.querySelector('#texts').value = '   '")
    browser.click("#predict")
    message = browser.wait_for(
        "!document.querySelector('#error').hidden && document.querySelector('#error').textContent"
    )
    assert "at least one text" in message

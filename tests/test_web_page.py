"""The page at GET /: predict, embed and the head view, driven in headless Chromium over CDP."""

import base64
import copy
import csv
import itertools
import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from classifier import artifacts
from classifier.stores import open_store
from tests.conftest import API_DB, DATASETS, REPO
from tests.test_client import live_server, support_rows

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO / "docs" / "screenshots" / "predict-page.png"
TEXTS = [
    "I was charged twice for my order, please refund one.",
    "The app crashes every time I open my basket.",
    "My parcel has been stuck in customs for ten days.",
]
EXPECTED = ["billing", "technical", "shipping"]
KEY = "web-page-test-key"

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
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a CDP method and return its result; events that arrive meanwhile are kept."""
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message["result"]
            if "method" in message:
                self.events.append(message)

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors and error log entries (e.g. a failed load)."""
        found = []
        for event in self.events:
            params = event["params"]
            if event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details["text"])
            elif event["method"] == "Runtime.consoleAPICalled" and params["type"] in (
                "error",
                "assert",
            ):
                found.append(" ".join(str(arg.get("value", arg)) for arg in params["args"]))
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """Poll until `expression` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, (
                f"timed out waiting for {expression}; page errors: {self.problems()}"
            )
            time.sleep(0.05)
        return value

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({selector!r});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
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
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("web") / "models"


@pytest.fixture(scope="module")
def server(models_dir) -> Iterator[str]:
    # DEMO_HEAD_ON_START trains `demo` from data/demo_support.csv in the background once
    # the server is up; the page needs it, so wait for it. API_KEY guards rollback.
    with live_server(models_dir, API_DB, DEMO_HEAD_ON_START="true", API_KEY=KEY) as url:
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

    # Grow the viewport to the whole page so every result card is in the picture; the
    # picture stops below them (the head view has a picture of its own).
    height = browser.evaluate("document.documentElement.scrollHeight")
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        width=900,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    bottom = browser.evaluate("document.querySelector('#try').getBoundingClientRect().bottom")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shot = browser.send(
        "Page.captureScreenshot",
        format="png",
        clip={"x": 0, "y": 0, "width": 900, "height": bottom + 16, "scale": 1},
    )
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


# -- the head view ---------------------------------------------------------------------------

HEAD_VIEW_SCREENSHOT = REPO / "docs" / "screenshots" / "head-view.png"
QUALITY_FIELDS = ("selection_metric", "chosen", "leaderboard", "search", "baseline", "calibration")
TOXIC_LABELS = ["toxic", "obscene", "insult"]


def train(url: str, name: str, examples: list[dict[str, Any]], **options: Any) -> None:
    response = httpx.post(
        f"{url}/heads/{name}/train",
        json={"examples": examples, **options},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=600,
    )
    assert response.status_code == 200, response.text


def describe(url: str, name: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/heads/{name}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def version_of(head: dict[str, Any], number: int) -> dict[str, Any]:
    return next(version for version in head["versions"] if version["version"] == number)


def toxic_examples(count: int = 300) -> list[dict[str, Any]]:
    """Half with at least one of three labels, half with none: a small multi-label set."""
    with (DATASETS / "toxic" / "train.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    flagged = [row for row in rows if any(row[label] == "1" for label in TOXIC_LABELS)]
    clean = [row for row in rows if not any(row[label] == "1" for label in TOXIC_LABELS)]
    return [
        {"text": row["text"][:1000], "labels": [x for x in TOXIC_LABELS if row[x] == "1"]}
        for row in flagged[: count // 2] + clean[: count // 2]
    ]


@pytest.fixture(scope="module")
def heads(server) -> dict[str, dict[str, Any]]:
    """Heads trained over the API with the default settings: two versions of `support`
    (multi-class), `tags` (multi-label, three toxic labels), two versions of `rollme`."""
    support = [{"text": row["text"], "label": row["label"]} for row in support_rows()]
    for seed in (1, 2):
        train(server, "support", support, seed=seed)
    train(server, "tags", toxic_examples(), test_size=0.3)
    for seed in (3, 4):
        train(server, "rollme", support, seed=seed)
    return {name: describe(server, name) for name in ("support", "tags", "rollme")}


def open_page(browser: Browser, url: str, width: int = 1200) -> None:
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable")
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        width=width,
        height=1000,
        deviceScaleFactor=1,
        mobile=False,
    )
    browser.send("Page.navigate", url=f"{url}/")
    browser.wait_for("document.querySelector('#view-head option[value=\"demo\"]') !== null")


def show_head(browser: Browser, name: str) -> None:
    browser.evaluate(
        f"(() => {{ const s = document.querySelector('#view-head'); s.value = {name!r};"
        " s.dispatchEvent(new Event('change')); })()"
    )
    shown_version(browser, name)


def shown_version(browser: Browser, name: str, version: int | None = None) -> int:
    """Wait until the version detail shows `name` (and `version`); return its version."""
    prefix = f"{name} v{version if version is not None else ''}"
    title = browser.wait_for(
        "(() => { const h = document.querySelector('#version-detail h3');"
        " const error = document.querySelector('#error');"
        " if (!error.hidden) return 'error: ' + error.textContent;"
        f" return h && h.firstChild.textContent.startsWith({prefix!r}) && h.firstChild.textContent;"
        " })()"
    )
    assert not title.startswith("error: "), (title, browser.problems())
    return int(title.removeprefix(f"{name} v"))


VERSION_ROWS = """[...document.querySelectorAll('#versions tbody tr')].map(tr => ({
  version: Number(tr.dataset.version),
  live: tr.classList.contains('live') && !!tr.querySelector('th .badge'),
  created: tr.querySelector('time') && tr.querySelector('time').getAttribute('datetime'),
  cells: [...tr.children].map(cell => cell.textContent.trim()),
  metrics: Object.fromEntries([...tr.querySelectorAll('[data-metric]')]
    .map(k => [k.dataset.metric, k.textContent.split(' ').pop()])),
  canRollBack: !tr.querySelector('button.rollback').disabled,
}))"""
CONFUSION = """[...document.querySelectorAll('#panel-confusion svg')].map(svg => ({
  label: svg.closest('figure') ? svg.closest('figure').dataset.label : null,
  cells: [...svg.querySelectorAll('.cm-cell')].map(g => [g.dataset.true, g.dataset.predicted,
    Number(g.dataset.count), g.querySelector('text') && g.querySelector('text').textContent]),
}))"""
F1_BARS = """[...document.querySelectorAll('#panel-f1 .bar-row')].map(g => [g.dataset.label,
  Number(g.dataset.value), Number(g.querySelector('rect').getAttribute('width'))])"""
# Curve points read back in data units through the plot frame drawn around them.
CURVES = """(() => { const out = {};
  for (const kind of ['roc', 'pr']) {
    const svg = document.querySelector(`#panel-${kind} svg`);
    if (!svg) continue;
    const f = svg.querySelector('.plot-frame');
    const [x0, y0, w, h] = ['x', 'y', 'width', 'height'].map(a => Number(f.getAttribute(a)));
    out[kind] = Object.fromEntries([...svg.querySelectorAll('polyline.curve')].map(p =>
      [p.dataset.label, p.getAttribute('points').split(' ').map(point => {
        const [x, y] = point.split(',').map(Number); return [(x - x0) / w, 1 - (y - y0) / h]; })]));
  }
  return out; })()"""
PANELS = "[...document.querySelectorAll('#version-detail .panel')].map(p => p.id)"
# A panel is empty when it has no drawing with marks in it and no table with rows.
EMPTY_PANELS = """[...document.querySelectorAll('.panel')].filter(p =>
  ![...p.querySelectorAll('svg')].some(s => s.querySelector('rect, polyline, line'))
  && !p.querySelector('table tbody tr')).map(p => p.id)"""
COLOURS = """(() => { const c = (selector, property) =>
    getComputedStyle(document.querySelector(selector))[property];
  return { page: c('body', 'backgroundColor'), text: c('body', 'color'),
    card: c('#panel-confusion', 'backgroundColor'), muted: c('#head-summary', 'color'),
    tick: c('#panel-confusion .tick', 'fill'),
    count: c('#panel-confusion .count:not(.on-heat)', 'fill'),
    value: c('#panel-f1 .value', 'fill'),
    curves: [...document.querySelectorAll('#panel-roc polyline.curve')]
      .map(p => getComputedStyle(p).stroke) }; })()"""


def contrast(foreground: str, background: str) -> float:
    """WCAG contrast ratio of two CSS rgb() colours."""

    def luminance(colour: str) -> float:
        channels = [float(v) / 255 for v in re.findall(r"[\d.]+", colour)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def check_readable(browser: Browser) -> float:
    """Text and chart marks stand out from their background; returns the page's luminance."""
    colours = browser.evaluate(COLOURS)
    assert contrast(colours["text"], colours["page"]) >= 7, colours
    assert contrast(colours["muted"], colours["page"]) >= 4.5, colours
    for key in ("tick", "count", "value"):
        assert contrast(colours[key], colours["card"]) >= 4.5, (key, colours)
    assert colours["curves"] and all(contrast(c, colours["card"]) >= 3 for c in colours["curves"])
    return contrast(colours["page"], "rgb(0, 0, 0)")


def check_charts(browser: Browser, version: dict[str, Any]) -> None:
    """The confusion matrix, F1 bars and curves on the page carry `version`'s numbers."""
    metrics = version["metrics"]
    matrix, labels = metrics["confusion_matrix"], metrics["labels"]
    drawn = browser.evaluate(CONFUSION)
    if isinstance(matrix, list):
        expected = [
            [labels[i], labels[j], count, str(count)]
            for i, row in enumerate(matrix)
            for j, count in enumerate(row)
        ]
        assert drawn == [{"label": None, "cells": expected}]
    else:
        assert [(m["label"], [cell[2] for cell in m["cells"]]) for m in drawn] == [
            (label, [count for row in cells for count in row]) for label, cells in matrix.items()
        ]
    bars = browser.evaluate(F1_BARS)
    assert [bar[0] for bar in bars] == list(metrics["per_class"])
    for label, value, _ in bars:
        assert value == pytest.approx(metrics["per_class"][label]["f1"], abs=1e-4)
    scale = {round(width / value, 1) for _, value, width in bars if value > 0.05}
    assert max(scale) - min(scale) < 1, "bar lengths are proportional to F1"
    curves = browser.evaluate(CURVES)
    for kind in ("roc", "pr"):
        assert list(curves[kind]) == list(metrics["curves"][kind])
        for label, points in curves[kind].items():
            saved = metrics["curves"][kind][label]
            assert [x for x, _ in points] == pytest.approx(saved["x"], abs=2e-3)
            assert [y for _, y in points] == pytest.approx(saved["y"], abs=2e-3)


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"needs the shared datasets at {DATASETS}")
def test_head_view_lists_versions_and_draws_the_charts(server, heads, browser):
    support = heads["support"]
    open_page(browser, server)
    show_head(browser, "support")
    assert shown_version(browser, "support") == support["live_version"] == 2

    rows = browser.evaluate(VERSION_ROWS)
    assert [row["version"] for row in rows] == [2, 1], "newest first"
    for row in rows:
        saved = version_of(support, row["version"])
        assert row["live"] == (row["version"] == 2) != row["canRollBack"]
        assert row["created"] == saved["created"]
        assert row["cells"][2:5] == [
            str(saved["n_train"]),
            saved["task"],
            ", ".join(saved["labels"]),
        ]
        assert row["metrics"] == {
            key: f"{saved['metrics'][key]:.3f}" for key in ("accuracy", "macro_f1", "roc_auc")
        }
    check_charts(browser, version_of(support, 2))
    panels = browser.evaluate(PANELS)
    for field, panel in [
        ("leaderboard", "panel-leaderboard"),
        ("baseline", "panel-baseline"),
        ("calibration", "panel-calibration"),
    ]:
        assert (panel in panels) == (field in version_of(support, 2)), field
    assert browser.evaluate(EMPTY_PANELS) == []

    # The picture for the README: the head view of the live version.
    height = browser.evaluate("document.documentElement.scrollHeight")
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        width=1200,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    top = browser.evaluate("document.querySelector('#heads').getBoundingClientRect().top")
    shot = browser.send(
        "Page.captureScreenshot",
        format="png",
        clip={"x": 0, "y": top - 8, "width": 1200, "height": height - top + 8, "scale": 1},
    )
    HEAD_VIEW_SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    assert HEAD_VIEW_SCREENSHOT.stat().st_size > 20_000

    # Readable in both colour schemes.
    light = check_readable(browser)
    browser.send(
        "Emulation.setEmulatedMedia",
        features=[{"name": "prefers-color-scheme", "value": "dark"}],
    )
    dark = check_readable(browser)
    assert dark < light / 4, "the dark scheme is dark"
    browser.send("Emulation.setEmulatedMedia", features=[])

    # The keyboard alone picks another version: focus its Show button, press Enter.
    browser.evaluate(
        "document.querySelector('#versions tr[data-version=\"1\"] button.show').focus()"
    )
    for kind in ("keyDown", "keyUp"):
        browser.send(
            "Input.dispatchKeyEvent",
            type=kind,
            key="Enter",
            code="Enter",
            windowsVirtualKeyCode=13,
            text="\r" if kind == "keyDown" else "",
        )
    shown_version(browser, "support", 1)
    assert browser.evaluate("document.activeElement.id") == "version-detail"
    check_charts(browser, version_of(support, 1))

    # A multi-label head: one 2x2 matrix per label, a curve per label.
    show_head(browser, "tags")
    tags = version_of(heads["tags"], heads["tags"]["live_version"])
    assert tags["task"] == "multilabel"
    check_charts(browser, tags)
    assert browser.evaluate(
        "[...document.querySelectorAll('#panel-confusion figure')].map(f => f.dataset.label)"
    ) == list(tags["metrics"]["confusion_matrix"])
    # Offline: everything the page loaded came from the server itself.
    loaded = {
        event["params"]["request"]["url"]
        for event in browser.events
        if event["method"] == "Network.requestWillBeSent"
    }
    assert f"{server}/static/charts.js" in loaded
    assert all(url.startswith((f"{server}/", "data:")) for url in loaded), loaded
    # Every control has a name a screen reader can say.
    assert (
        browser.evaluate(
            "[...document.querySelectorAll('button')].filter(b =>"
            " !(b.getAttribute('aria-label') || b.textContent.trim())).length"
        )
        == 0
    )
    assert (
        browser.evaluate(
            "[...document.querySelectorAll('select, input, textarea')].filter(i =>"
            ' !document.querySelector(`label[for="${i.id}"]`)).length'
        )
        == 0
    )
    assert browser.problems() == []


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"needs the shared datasets at {DATASETS}")
def test_rollback_from_the_page_needs_the_api_key(server, heads, browser):
    assert describe(server, "rollme")["live_version"] == 2
    refused = httpx.post(f"{server}/heads/rollme/rollback", json={"version": 1}, timeout=30)
    assert refused.status_code == 401
    open_page(browser, server)
    show_head(browser, "rollme")

    # No key: the server's 401 message, word for word, in the page's error box.
    browser.click('#versions tr[data-version="1"] button.rollback')
    message = browser.wait_for(
        "!document.querySelector('#error').hidden"
        " && document.querySelector('#error .message').textContent"
    )
    assert message == refused.json()["error"]["message"]
    assert browser.evaluate("document.querySelector('#error').textContent").startswith(
        "×Error 401: "
    )
    assert describe(server, "rollme")["live_version"] == 2

    # With the key typed in, the same button makes v1 live.
    browser.evaluate("document.querySelector('#api-key').focus()")
    browser.send("Input.insertText", text=KEY)
    browser.click('#versions tr[data-version="1"] button.rollback')
    status = browser.wait_for(
        "document.querySelector('#heads-status').textContent.includes('is live')"
        " && document.querySelector('#heads-status').textContent"
    )
    assert status == "v1 of rollme is live (was v2)."
    assert describe(server, "rollme")["live_version"] == 1
    assert browser.evaluate("document.querySelector('#versions tr.live').dataset.version") == "1"
    assert browser.evaluate("document.querySelector('#error').hidden") is True
    browser.wait_for(
        "document.querySelector('#head option[value=\"rollme\"]')"
        ".textContent.startsWith('rollme (v1,')"
    )

    # The key stays in the tab: never in localStorage or the URL, in sessionStorage only
    # when asked, and then it survives a reload of the tab.
    assert browser.evaluate("localStorage.length") == 0
    assert KEY not in browser.evaluate("location.href")
    assert browser.evaluate("sessionStorage.length") == 0
    browser.click("#remember-key")
    assert browser.evaluate("sessionStorage.getItem('bertheads.apiKey')") == KEY
    browser.send("Page.reload")
    browser.wait_for("document.querySelector('#view-head option[value=\"rollme\"]') !== null")
    assert browser.evaluate("document.querySelector('#api-key').value") == KEY
    assert browser.evaluate("document.querySelector('#remember-key').checked") is True
    browser.click("#remember-key")
    assert browser.evaluate("sessionStorage.length + localStorage.length") == 0
    assert browser.problems() == [
        problem for problem in browser.problems() if "401 (Unauthorized)" in problem
    ], "the refused rollback is the only error"


def publish_copy(models_dir: Path, name: str, source: str, change: Any) -> int:
    """Save a copy of `source`'s live version as the next version of `name`, its sidecar
    edited by `change` (artifact checksums are recomputed by publish)."""
    store = open_store(str(models_dir))
    version = store.live_version(source)
    metadata = change(copy.deepcopy(store.read_metadata(source, version)))
    record, _ = artifacts.publish(store, name, store.read_artifact(source, version), metadata)
    return record.version


def wait_live(url: str, name: str, version: int) -> None:
    deadline = time.monotonic() + 30
    while describe_live(url, name) != version:
        assert time.monotonic() < deadline, f"{name} v{version} did not go live"
        time.sleep(0.2)


def describe_live(url: str, name: str) -> int | None:
    response = httpx.get(f"{url}/heads/{name}", timeout=30)
    return response.json().get("live_version") if response.status_code == 200 else None


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"needs the shared datasets at {DATASETS}")
def test_a_head_without_the_new_fields_renders_without_errors(server, heads, models_dir, browser):
    def before_curves(metadata: dict[str, Any]) -> dict[str, Any]:
        for field in QUALITY_FIELDS:
            metadata.pop(field, None)
        metadata["metrics"].pop("curves")
        return metadata

    def without_metrics(metadata: dict[str, Any]) -> dict[str, Any]:
        # What train.py --test-size 0 saves: no held-out rows, no scores.
        metadata = before_curves(metadata)
        metadata["metrics"] = {"fit_seconds": metadata["metrics"]["fit_seconds"]}
        return metadata

    def empty_fields(metadata: dict[str, Any]) -> dict[str, Any]:
        empty = {"leaderboard": [], "chosen": None, "search": {}, "baseline": {}}
        return {**metadata, **empty, "calibration": {"reliability": []}}

    assert publish_copy(models_dir, "legacy", "support", before_curves) == 1
    assert publish_copy(models_dir, "legacy", "support", without_metrics) == 2
    assert publish_copy(models_dir, "legacy", "support", empty_fields) == 3
    wait_live(server, "legacy", 3)
    open_page(browser, server)
    show_head(browser, "legacy")
    expected = {
        3: ["panel-confusion", "panel-f1", "panel-roc", "panel-pr"],
        2: [],
        1: ["panel-confusion", "panel-f1"],
    }
    for version, panels in expected.items():
        browser.click(f'#versions tr[data-version="{version}"] button.show')
        shown_version(browser, "legacy", version)
        assert browser.evaluate(PANELS) == panels
        assert browser.evaluate(EMPTY_PANELS) == []
        if not panels:
            assert "saved no evaluation" in browser.evaluate(
                "document.querySelector('#version-detail').textContent"
            )
    assert "Chosen candidate" not in browser.evaluate(
        "document.querySelector('#versions thead').textContent"
    )
    assert browser.evaluate("document.querySelector('#error').hidden") is True
    assert browser.problems() == []


QUALITY_PANELS = """(() => {
  const q = (selector) => document.querySelector(selector);
  const text = (selector) => q(selector) ? q(selector).textContent : null;
  const verdict = (cell) => ['better', 'worse'].find(v => cell.classList.contains(v)) || 'same';
  return {
    rows: [...document.querySelectorAll('#panel-leaderboard .lb-row')].map(g => ({
      candidate: g.dataset.candidate, score: Number(g.dataset.score),
      fit: Number(g.dataset.fitSeconds), chosen: g.classList.contains('chosen'),
      shown: g.querySelector('.score').textContent })),
    chosen: text('#panel-leaderboard .chosen-name'),
    skipped: [...document.querySelectorAll('#panel-leaderboard ul.skipped li')]
      .map(li => [li.dataset.candidate, li.querySelector('.status').textContent]),
    baselineName: text('#panel-baseline .baseline-name'),
    baseline: [...document.querySelectorAll('#panel-baseline tbody tr')].map(tr => ({
      metric: tr.dataset.metric, head: tr.querySelector('.head-value').textContent,
      baseline: tr.querySelector('.baseline-value').textContent,
      diff: Number(tr.querySelector('.diff').dataset.diff),
      verdict: verdict(tr.querySelector('.diff')),
      colour: getComputedStyle(tr.querySelector('.diff')).color,
      card: getComputedStyle(q('#panel-baseline')).backgroundColor })),
    ece: text('#panel-calibration .ece'), method: text('#panel-calibration .method'),
    bins: [...document.querySelectorAll('#panel-calibration .rel-bar')].map(r =>
      [Number(r.dataset.confidence), Number(r.dataset.accuracy), Number(r.dataset.count)]),
  }; })()"""


def check_quality_panels(browser: Browser, version: dict[str, Any]) -> None:
    """The leaderboard, baseline and calibration panels show `version`'s numbers."""
    shown = browser.evaluate(QUALITY_PANELS)
    board = version["leaderboard"]
    scored = [
        row for row in board if row["cv_score"] is not None and row.get("status", "ok") == "ok"
    ]
    assert scored, "a leaderboard has at least the chosen candidate"
    assert [row["candidate"] for row in shown["rows"]] == [row["candidate"] for row in scored]
    for drawn, saved in zip(shown["rows"], scored, strict=True):
        assert drawn["score"] == pytest.approx(saved["cv_score"], abs=1e-4)
        assert drawn["shown"] == f"{saved['cv_score']:.3f}"
        assert drawn["fit"] == pytest.approx(saved["fit_seconds"], abs=0.005)
        assert drawn["chosen"] == (saved["candidate"] == version["chosen"]["candidate"])
    assert shown["chosen"] == version["chosen"]["candidate"]
    assert shown["skipped"] == [
        [row["candidate"], row.get("status") or "no score"] for row in board if row not in scored
    ]

    baseline = version["baseline"]
    assert shown["baselineName"] == baseline["name"]
    # Every score of the baseline (not its row count or timings), in its order.
    assert [row["metric"] for row in shown["baseline"]] == [
        key
        for key, value in baseline["metrics"].items()
        if isinstance(value, float) and not key.endswith(("_seconds", "_std"))
    ]
    verdicts = set()
    for row in shown["baseline"]:
        key = row["metric"]
        difference = baseline.get("head_minus_baseline", {}).get(key)
        if difference is None:
            difference = version["metrics"][key] - baseline["metrics"][key]
        assert row["head"] == f"{version['metrics'][key]:.3f}"
        assert row["baseline"] == f"{baseline['metrics'][key]:.3f}"
        assert row["diff"] == pytest.approx(difference, abs=1e-4)
        verdict = "same" if abs(difference) < 5e-4 else "better" if difference > 0 else "worse"
        assert row["verdict"] == verdict
        verdicts.add((verdict, row["colour"]))
        assert contrast(row["colour"], row["card"]) >= 4.5
    colours = {verdict: colour for verdict, colour in verdicts}
    assert len(colours) == len(verdicts), "one colour per verdict"
    if {"better", "worse"} <= set(colours):
        better, worse = (re.findall(r"\d+", colours[v])[:3] for v in ("better", "worse"))
        assert int(better[1]) > int(better[0]) and int(worse[0]) > int(worse[1]), colours

    calibration = version["calibration"]
    assert shown["ece"] == f"{calibration['ece']:.3f}"
    assert shown["method"] == calibration["method"]
    assert shown["bins"] == [
        [
            pytest.approx(b["confidence"], abs=1e-4),
            pytest.approx(b["accuracy"], abs=1e-4),
            b["count"],
        ]
        for b in calibration["reliability"]
        if b["count"] > 0
    ]


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"needs the shared datasets at {DATASETS}")
def test_quality_panels_render_the_documented_fields(server, heads, models_dir, browser):
    """Leaderboard, baseline and calibration as METADATA.md describes them, on a copy of a
    real version: what the page shows is what the sidecar says."""

    def with_quality(metadata: dict[str, Any]) -> dict[str, Any]:
        metrics = metadata["metrics"]
        baseline = {
            "accuracy": metrics["accuracy"] - 0.05,
            "macro_f1": metrics["macro_f1"] + 0.02,
            "roc_auc": metrics["roc_auc"],
        }
        bins = [(0.25, 0.0, 0), (0.35, 0.3, 4), (0.55, 0.6, 11), (0.75, 0.7, 17), (0.95, 0.97, 32)]
        return {
            **metadata,
            "selection_metric": "macro_f1",
            "chosen": {
                "candidate": "stack(lexical-svm,embedding-logreg)",
                "family": "stacked",
                "features": "hybrid",
                "cv_score": 0.871,
                "cv_std": 0.012,
            },
            "leaderboard": [
                {
                    "candidate": "stack(lexical-svm,embedding-logreg)",
                    "family": "stacked",
                    "features": "hybrid",
                    "cv_score": 0.871,
                    "cv_std": 0.012,
                    "fit_seconds": 4.2,
                    "status": "ok",
                },
                {
                    "candidate": "lexical-svm C=0.5",
                    "family": "lexical",
                    "features": "lexical",
                    "cv_score": 0.862,
                    "cv_std": 0.010,
                    "fit_seconds": 1.9,
                    "status": "ok",
                },
                {
                    "candidate": "embedding-logreg C=1",
                    "family": "logreg",
                    "features": "embedding",
                    "cv_score": 0.84,
                    "cv_std": 0.02,
                    "fit_seconds": 0.61,
                    "status": "ok",
                },
                {
                    "candidate": "mlp focal",
                    "family": "mlp",
                    "features": "embedding",
                    "cv_score": None,
                    "cv_std": None,
                    "fit_seconds": 0.0,
                    "status": "skipped: budget",
                },
            ],
            "search": {"budget_seconds": 60, "seconds": 41.3, "folds": 5},
            "baseline": {
                "name": "tfidf-word1-2+char2-5-linear",
                # As evaluate() writes them: a row count and a timing beside the scores.
                "metrics": {**baseline, "n_rows": metrics["n_rows"], "fit_seconds": 0.4},
                "head_minus_baseline": {
                    key: metrics[key] - value for key, value in baseline.items()
                },
            },
            "calibration": {
                "method": "isotonic",
                "ece": 0.042,
                "reliability": [
                    {"low": c - 0.05, "high": c + 0.05, "confidence": c, "accuracy": a, "count": n}
                    for c, a, n in bins
                ],
            },
        }

    version = publish_copy(models_dir, "documented", "support", with_quality)
    wait_live(server, "documented", version)
    saved = version_of(describe(server, "documented"), version)
    open_page(browser, server)
    show_head(browser, "documented")
    assert browser.evaluate(PANELS)[:2] == ["panel-leaderboard", "panel-baseline"]
    check_quality_panels(browser, saved)
    assert "stack(lexical-svm,embedding-logreg)" in browser.evaluate(
        "document.querySelector('#versions .chosen-cell').textContent"
    )
    browser.send(
        "Emulation.setEmulatedMedia",
        features=[{"name": "prefers-color-scheme", "value": "dark"}],
    )
    check_quality_panels(browser, saved)
    assert browser.problems() == []


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"needs the shared datasets at {DATASETS}")
def test_default_head_shows_its_leaderboard_baseline_and_calibration(server, heads, browser):
    """`support` was trained with the default settings: its live version carries the
    leaderboard, baseline and calibration, and the page shows their numbers."""
    support = describe(server, "support")
    live = version_of(support, support["live_version"])
    missing = [
        field for field in ("chosen", "leaderboard", "baseline", "calibration") if field not in live
    ]
    assert not missing, f"the default head's metadata lacks {missing}"
    open_page(browser, server)
    show_head(browser, "support")
    check_quality_panels(browser, live)
    assert browser.problems() == []


def test_static_files_are_only_the_page_s_own(server):
    script = httpx.get(f"{server}/static/heads.js", timeout=10)
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    for path in ("/static/main.py", "/static/..%2Fmain.py", "/static/index.html"):
        answer = httpx.get(f"{server}{path}", timeout=10)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["type"] == "not_found_error"

"""An sgm report in a real browser: headless Chromium loads the page `sgm report` writes from
small fixture stores, and the test asserts what a reader would see.

No console error or uncaught exception, no failed load, every ``<img>`` decodes with a
non-zero natural size, the page has its title heading, its section headings and text, and a
full-page screenshot (saved as report.png in the test's folder) is not blank. A second test is
the negative control: a page with a broken image, a missing file and a script error is caught.

The browser is Debian's ``chromium-headless-shell`` (or ``chromium``), driven over the Chrome
DevTools protocol with a small client on the ``websocket-client`` package (the dev extra);
nothing else is needed (no playwright, no browser download). The test installs the browser
with apt-get when it is missing and it runs as root, and skips with the reason otherwise (or
with SGM_SKIP_BROWSER=1). Chromium runs with a fresh profile and the flags that keep it off the
network (no component updates, sync, QUIC or background requests).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_evaluate_report import make_stores

from sgm.cli import main

PACKAGES = ("chromium-headless-shell", "chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars",
         "--mute-audio", "--remote-debugging-port=0", "--window-size=1280,900"]
TIMEOUT_S = 60.0

# Runs in the page after its load event: what a reader would see, as one JSON value.
PAGE_FACTS = """(async () => {
  const imgs = Array.from(document.images);
  const decoded = await Promise.all(imgs.map(i => i.decode().then(() => true, () => false)));
  const texts = s => Array.from(document.querySelectorAll(s)).map(e => e.textContent.trim());
  return {
    title: document.title, h1: texts('h1'), h2: texts('h2'),
    text_length: document.body ? document.body.innerText.trim().length : 0,
    images: imgs.map((i, k) => ({alt: i.alt, decoded: decoded[k], width: i.naturalWidth,
                                 height: i.naturalHeight})),
    width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
  };
})()"""


def find_browser() -> str | None:
    for name in PACKAGES:
        if path := shutil.which(name):
            return path
    return None


def browser() -> str:
    """The Chromium binary: installed with apt-get when missing and root, else skip."""
    if os.environ.get("SGM_SKIP_BROWSER") == "1":
        pytest.skip("SGM_SKIP_BROWSER=1")
    pytest.importorskip("websocket", reason="pip install websocket-client (the dev extra)")
    if path := find_browser():
        return path
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("no Chromium here (Debian: chromium-headless-shell); installing it needs "
                    "root and apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", PACKAGES[0]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, input="", timeout=600)
    if done.returncode != 0:  # stale or missing package lists
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, input="",
                       timeout=300)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, input="",
                              timeout=600)
    if done.returncode != 0 or not (path := find_browser()):
        pytest.skip(f"apt-get could not install {PACKAGES[0]}: {done.stderr.strip()[-300:]}")
    return path


class DevTools:
    """A minimal Chrome DevTools protocol client: commands and events of one page session."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT_S, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, page: bool = True) -> dict:
        """Run ``method``; its result (events arriving meanwhile are kept)."""
        msg: dict[str, Any] = {"id": next(self.ids), "method": method, "params": params or {}}
        if page and self.session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg["id"]:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float = TIMEOUT_S) -> dict:
        """The first event ``method`` of the page (already received or the next ones)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["method"] == method and event.get("sessionId") == self.session:
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(json.loads(self.ws.recv()))

    def close(self) -> None:
        self.ws.close()


@dataclass
class PageView:
    """What the browser saw: facts from the page, its errors and a screenshot."""

    facts: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    seconds: float = 0.0


def _errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among the page's events."""
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                              for a in p.get("args", [])))
        elif e["method"] == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + str(d.get("exception", {}).get("description",
                                                                      d.get("text"))))
        elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
    return out


@contextlib.contextmanager
def page_session(binary: str, page: Path, width: int = 1280, height: int = 900
                 ) -> Iterator[DevTools]:
    """Headless Chromium with ``page`` loaded (fresh profile, off the network): a DevTools
    session attached to its tab, closed with the browser afterwards."""
    profile = Path(tempfile.mkdtemp(prefix="sgm-chromium-"))
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    tools = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT_S
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        tools = DevTools(f"ws://127.0.0.1:{port}{path}")
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        tools.session = tools.send("Target.attachToTarget",
                                   {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            tools.send(method)
        tools.send("Emulation.setDeviceMetricsOverride",
                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        tools.send("Page.navigate", {"url": page.resolve().as_uri()})
        tools.wait_for("Page.loadEventFired")
        yield tools
        try:
            tools.send("Browser.close", page=False)
        except Exception:  # noqa: BLE001 - the browser may close the socket first
            pass
    finally:
        if tools is not None:
            tools.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def evaluate_js(tools: DevTools, expression: str) -> Any:
    """The value of a JavaScript expression (promises awaited) in the page."""
    reply = tools.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                            "returnByValue": True})
    if "exceptionDetails" in reply:
        raise RuntimeError(f"JavaScript failed: {reply['exceptionDetails']}")
    return reply["result"].get("value")


def capture(tools: DevTools, out: Path, clip: dict[str, float]) -> Path:
    """A PNG screenshot of the page region ``clip`` (x, y, width, height in CSS pixels)."""
    shot = tools.send("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}})
    out.write_bytes(base64.b64decode(shot["data"]))
    return out


# The region of the first element matching a selector, in page coordinates (null if none).
REGION = """(() => {{
  const e = document.querySelector({selector});
  if (!e) return null;
  const r = e.getBoundingClientRect();
  return {{x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width,
          height: r.height}};
}})()"""


def screenshot_parts(binary: str, page: Path, parts: dict[Path, str | None],
                     width: int = 1280, height: int = 900) -> dict[Path, dict[str, float]]:
    """Screenshots of parts of ``page`` in a ``width`` × ``height`` window: output file → a CSS
    selector (that element, with a margin) or None (the top of the page, the window's height).
    Returns each part's region."""
    regions = {}
    with page_session(binary, page, width=width, height=height) as tools:
        width = evaluate_js(tools, "document.documentElement.scrollWidth")
        for out, selector in parts.items():
            if selector is None:
                region = {"x": 0, "y": 0, "width": width, "height": height}
            else:
                found = evaluate_js(tools, REGION.format(selector=json.dumps(selector)))
                if found is None:
                    raise LookupError(f"{page}: nothing matches {selector!r}")
                region = {"x": max(found["x"] - 8, 0), "y": max(found["y"] - 8, 0),
                          "width": min(found["width"] + 16, width),
                          "height": found["height"] + 16}
            regions[out] = region
            capture(tools, out, region)
    return regions


def view_page(binary: str, page: Path, screenshot: Path) -> PageView:
    """Load ``page`` in headless Chromium and look at it as a reader would."""
    start = time.monotonic()
    with page_session(binary, page) as tools:
        facts = evaluate_js(tools, PAGE_FACTS)
        capture(tools, screenshot, {"x": 0, "y": 0, "width": facts["width"],
                                    "height": min(facts["height"], 16384)})
        errors = _errors(tools.events)
    return PageView(facts, errors, screenshot, time.monotonic() - start)


def png_pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(path)


@pytest.fixture(scope="module")
def chromium() -> str:
    return browser()


def test_report_renders_in_chromium(chromium: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    paths = make_stores(tmp_path / "stores")
    html = tmp_path / "report" / "index.html"
    evaluate = ["evaluate", "--fields", paths["fields"], "--obs", paths["obs"], "--posterior",
                paths["posterior"], "--metrics", tmp_path / "metrics.json", "--maps",
                tmp_path / "maps.zarr"]
    report = ["report", "--fields", paths["fields"], "--obs", paths["obs"], "--posterior",
              paths["posterior"], "--metrics", tmp_path / "metrics.json", "--loss",
              paths["loss"], "--out", html, "--n-maps", "2"]
    assert main([str(a) for a in evaluate]) == 0
    assert main([str(a) for a in report]) == 0
    built = time.monotonic() - t0

    view = view_page(chromium, html, tmp_path / "report.png")
    f = view.facts
    assert view.errors == []
    assert f["title"] == "sgm posterior report — fixture"
    assert f["h1"] == ["sgm posterior report — fixture"]
    assert "tas [K]" in f["h2"] and "Training" in f["h2"]
    assert f["text_length"] > 1000
    images = f["images"]
    assert len(images) >= 5
    bad = [i for i in images if not (i["decoded"] and i["width"] > 0 and i["height"] > 0)]
    assert bad == []
    pixels = png_pixels(view.screenshot)
    assert pixels.shape[0] >= min(f["height"], 16384) and pixels.shape[1] == f["width"]
    assert pixels[..., :3].std() > 0.05  # not a blank page
    print(f"\nreport built in {built:.1f} s, viewed in Chromium in {view.seconds:.1f} s: "
          f"{len(images)} images, {f['text_length']} characters, page "
          f"{f['width']}×{f['height']} px; screenshot {view.screenshot}")


def test_a_broken_page_is_caught(chromium: str, tmp_path: Path) -> None:
    """Negative control: each kind of breakage the report test looks for is reported."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>broken</title></head><body>"
        "<h1>broken</h1><img alt='corrupt' src='data:image/png;base64,iVBORw0KGgoAAAA='>"
        "<img alt='missing' src='missing.png'>"
        "<script>console.error('boom'); null.field;</script></body></html>")
    view = view_page(chromium, page, tmp_path / "broken.png")
    text = "\n".join(view.errors)
    assert "console: boom" in text
    assert "exception: TypeError" in text
    assert "missing.png" in text  # the failed load
    decoded = {i["alt"]: i["decoded"] and i["width"] > 0 for i in view.facts["images"]}
    assert decoded == {"corrupt": False, "missing": False}


# Runs in the page: the figure links, each loaded as an image, and the folded raw provenance.
LINKS_AND_FOLDS = """(async () => {
  const links = Array.from(document.querySelectorAll('figcaption a.file'));
  const loaded = await Promise.all(links.map(a => new Promise(done => {
    const img = new Image();
    img.onload = () => done(img.naturalWidth > 0);
    img.onerror = () => done(false);
    img.src = a.href;
  })));
  const fold = document.querySelector('details.raw');
  const pre = fold ? fold.querySelector('pre') : null;
  const look = () => ({height: fold.getBoundingClientRect().height,
                       visible: pre.checkVisibility()});
  const closed = fold ? look() : null;
  if (fold) fold.open = true;
  return {links: links.map(a => a.getAttribute('href')), loaded, closed,
          opened: fold ? look() : null, figures: document.querySelectorAll('figure').length,
          summary: fold ? fold.querySelector('summary').textContent : null,
          raw: pre ? pre.textContent : null};
})()"""


def test_report_links_folds_and_parts_in_chromium(chromium: str, tmp_path: Path) -> None:
    """Every caption's link opens its PNG beside the page, the raw provenance is folded until
    opened, and the top of the page and the maps can be captured alone (as for the README)."""
    paths = make_stores(tmp_path / "stores")
    html = tmp_path / "report" / "index.html"
    assert main([str(a) for a in [
        "evaluate", "--fields", paths["fields"], "--obs", paths["obs"], "--posterior",
        paths["posterior"], "--metrics", tmp_path / "metrics.json", "--maps",
        tmp_path / "maps.zarr"]]) == 0
    assert main([str(a) for a in [
        "report", "--fields", paths["fields"], "--obs", paths["obs"], "--posterior",
        paths["posterior"], "--metrics", tmp_path / "metrics.json", "--loss", paths["loss"],
        "--out", html, "--n-maps", "2"]]) == 0
    with page_session(chromium, html) as tools:
        facts = evaluate_js(tools, LINKS_AND_FOLDS)
        assert _errors(tools.events) == []
    assert len(facts["links"]) == facts["figures"] >= 6
    assert "maps_tas.png" in facts["links"] and all(facts["loaded"])
    assert facts["summary"] == "Raw provenance"
    closed, opened = facts["closed"], facts["opened"]
    assert not closed["visible"] and opened["visible"]
    assert closed["height"] < 40 and opened["height"] > closed["height"] + 100
    assert '"kind": "coarsen"' in facts["raw"]

    top, maps = tmp_path / "top.png", tmp_path / "maps.png"
    regions = screenshot_parts(chromium, html, {
        top: None, maps: "figure:has(img[alt='maps_tas.png'])"}, height=700)
    assert regions[top]["height"] == 700 and regions[maps]["y"] > 0
    for shot in (top, maps):
        pixels = png_pixels(shot)
        assert pixels.shape[0] == round(regions[shot]["height"])
        assert pixels[..., :3].std() > 0.05
    with pytest.raises(LookupError, match="nothing matches"):
        screenshot_parts(chromium, html, {tmp_path / "x.png": "#no-such-thing"})

"""A tiny headless-Chromium driver for tests: the Chrome DevTools Protocol over one websocket (``websocket-client``).

``Browser.start()`` launches ``chromium --headless`` on a free loopback port, opens a page and returns a driver
that navigates, evaluates JavaScript, clicks at an element's position with real mouse events (so the page's own
listeners run) and saves full-page screenshots. :func:`missing` says in one line why no browser can be driven.
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome")


def binary() -> str | None:
    """The first Chromium-like browser on PATH."""
    return next((path for path in map(shutil.which, BINARIES) if path), None)


def missing() -> str | None:
    """Why the browser tests cannot run (one line), or None."""
    if binary() is None:
        return "no chromium on PATH (apt-get install chromium; .ci/run installs it where apt works)"
    try:
        import websocket  # noqa: F401
    except ImportError:
        return "the websocket-client package is missing (scripts/setup_env.sh installs it)"
    return None


class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol; use as a context manager."""

    def __init__(self, process: subprocess.Popen, profile: tempfile.TemporaryDirectory, socket):
        self.process, self.profile, self.socket, self.next_id = process, profile, socket, 0

    @classmethod
    def start(cls, width: int = 1280, height: int = 900, timeout: float = 20.0) -> "Browser":
        """Launch the browser and connect to its first page; a clear error when it does not come up in time."""
        import websocket

        profile = tempfile.TemporaryDirectory(prefix="bench-chromium-")
        process = subprocess.Popen(
            [binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-extensions", "--hide-scrollbars", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={profile.name}", f"--window-size={width},{height}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = _devtools_port(Path(profile.name), process, timeout)
            page = _page_socket_url(port, timeout)
            socket = websocket.create_connection(page, timeout=timeout, suppress_origin=True)
        except BaseException:
            process.kill()
            process.wait()
            profile.cleanup()
            raise
        browser = cls(process, profile, socket)
        browser.call("Page.enable")
        browser.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                     mobile=False)
        return browser

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the browser this driver started and remove its profile."""
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.profile.cleanup()

    def call(self, method: str, **params) -> dict:
        """Send one protocol command and return its result (events that arrive meanwhile are dropped)."""
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})

    def wait_for(self, event: str, timeout: float = 20.0) -> dict:
        """Wait for the next protocol event named ``event``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv())
            if message.get("method") == event:
                return message.get("params", {})
        raise TimeoutError(f"no {event} within {timeout:.0f} s")

    def open(self, path: Path) -> None:
        """Load a local file and wait until it has loaded."""
        self.call("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-serialisable); a JS exception is an error."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails'].get('text')} in {expression[:80]}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """Click the middle of the first element matching ``selector`` with real mouse events."""
        box = self.evaluate(f"(function () {{ var e = document.querySelector({json.dumps(selector)}); "
                            "e.scrollIntoView({block: 'center'}); var r = e.getBoundingClientRect(); "
                            "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            extra = {"button": "left", "clickCount": 1} if kind != "mouseMoved" else {}
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, **extra)

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole page (not just the window) to ``path``."""
        self.evaluate("window.scrollTo(0, 0)")
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def _devtools_port(profile: Path, process: subprocess.Popen, timeout: float) -> int:
    """The port Chromium chose, from the ``DevToolsActivePort`` file it writes into its profile."""
    marker, deadline = profile / "DevToolsActivePort", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with status {process.returncode} before it listened")
        if marker.is_file():
            lines = marker.read_text().split()
            if lines:
                return int(lines[0])
        time.sleep(0.05)
    raise TimeoutError(f"chromium did not open its DevTools port within {timeout:.0f} s")


def _page_socket_url(port: int, timeout: float) -> str:
    """The websocket address of the browser's first page."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as answer:
            pages = [t for t in json.load(answer) if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.05)
    raise TimeoutError(f"chromium opened no page within {timeout:.0f} s")

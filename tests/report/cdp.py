"""A small Chrome DevTools Protocol client that drives Debian's /usr/bin/chromium for the browser tests.

Why not Playwright or Selenium: both would need a driver (Playwright's node driver, or chromium-driver and
the matching Selenium release) for what is a handful of CDP calls; aiohttp (an apimon dependency) already
speaks WebSocket. Nothing is downloaded: the browser is Debian's package (``make test`` installs it).

Chromium starts headless, sandbox and GPU off, with no background networking, component updates, sync or
first-run work, in a fresh ``--user-data-dir``, and with every host name resolving nowhere: a page that tried
to reach the network would be seen (``Network.requestWillBeSent``) and could not leak anything.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
)


class BrowserError(Exception):
    pass


class Page:
    """One tab, attached with a flattened session; collects every network request and log entry."""

    def __init__(self, browser: Browser, session: str):
        self._b = browser
        self.session = session
        self.requests: list[str] = []
        self.log: list[dict] = []

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        return self._b.send(method, params, session=self.session, timeout=timeout)

    def goto(self, url: str, timeout: float = 30) -> None:
        self._b.loaded.discard(self.session)
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"navigation to {url} failed: {result['errorText']}")
        deadline = time.monotonic() + timeout
        while self.session not in self._b.loaded:
            if time.monotonic() > deadline:
                raise BrowserError(f"{url} did not finish loading in {timeout} s")
            self._b.pump(0.05)
        self._b.pump(0.2)  # late requests (images, fonts) would show up here

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails'].get('text')}: {expression[:200]}")
        return result["result"].get("value")

    def set_width(self, width: int, height: int = 900) -> None:
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": width < 600})

    def screenshot(self, path: Path, width: int, *, max_height: int = 6000) -> Path:
        """A full-page PNG ``width`` CSS pixels wide (at most ``max_height`` tall)."""
        self.set_width(width)
        self._b.pump(0.2)
        height = min(int(self.eval("Math.ceil(document.documentElement.scrollHeight)")), max_height)
        self.set_width(width, height)
        self._b.pump(0.2)
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


class Browser:
    """``with Browser() as b: page = b.new_page()``: a headless chromium for the duration of the block."""

    def __init__(self, executable: str = CHROMIUM):
        self.executable = executable
        self.loaded: set[str] = set()
        self._pages: dict[str, Page] = {}
        self._next = 0
        self._replies: dict[int, dict] = {}

    def __enter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="apimon-chromium-")
        self._proc = subprocess.Popen(
            [self.executable, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "HOME": self._profile},
        )
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise BrowserError(f"{self.executable} did not start (exit {self._proc.poll()})")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._connect(f"ws://127.0.0.1:{port}{path}"))
        return self

    async def _connect(self, url: str) -> None:
        import aiohttp

        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=0)

    def __exit__(self, *exc) -> None:
        try:
            if getattr(self, "_loop", None) is not None:
                self._loop.run_until_complete(self._close())
                self._loop.close()
        finally:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            shutil.rmtree(self._profile, ignore_errors=True)

    async def _close(self) -> None:
        await self._ws.close()
        await self._http.close()

    # --- protocol
    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 30) -> dict:
        self._next += 1
        msg: dict = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._loop.run_until_complete(self._ws.send_str(json.dumps(msg)))
        deadline = time.monotonic() + timeout
        while self._next not in self._replies:
            if time.monotonic() > deadline:
                raise BrowserError(f"no answer to {method} in {timeout} s")
            self.pump(0.05)
        reply = self._replies.pop(self._next)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def pump(self, seconds: float) -> None:
        """Read messages for up to ``seconds``: replies and the events the pages collect."""
        self._loop.run_until_complete(self._pump(seconds))

    async def _pump(self, seconds: float) -> None:
        import aiohttp

        end = self._loop.time() + seconds
        while True:
            left = end - self._loop.time()
            if left <= 0:
                return
            try:
                msg = await asyncio.wait_for(self._ws.receive(), left)
            except TimeoutError:
                return
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"the browser closed its DevTools connection ({msg.type})")
            data = json.loads(msg.data)
            if "id" in data:
                self._replies[data["id"]] = data
                continue
            page = self._pages.get(data.get("sessionId", ""))
            method, params = data.get("method"), data.get("params", {})
            if page is None:
                continue
            if method == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"])
            elif method == "Log.entryAdded":
                page.log.append(params["entry"])
            elif method == "Runtime.consoleAPICalled":
                page.log.append({"source": "console", "level": params.get("type"),
                                 "text": " ".join(str(a.get("value", "")) for a in params.get("args", []))})
            elif method == "Page.loadEventFired":
                self.loaded.add(page.session)

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self._pages[session] = page
        for domain in ("Page", "Network", "Log", "Runtime"):
            page.send(f"{domain}.enable")
        return page

"""Headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``), standard library only.

``open_page(path)`` loads a local HTML file and returns what a person would see go wrong: images
that did not load, console errors and uncaught exceptions, and a full-page screenshot (PNG).
Chromium comes from Debian's ``chromium`` package (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Page:
    images: list[dict]  # per <img>: complete, naturalWidth, naturalHeight
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    title: str = ""
    text: str = ""
    screenshot: bytes = b""


def chromium() -> str | None:
    return next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None)


class _Pipe:
    def __init__(self, executable: str, profile: str) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire() -> None:  # the child's fds 3 and 4 are the DevTools pipe
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(3, 4), preexec_fn=wire)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(method)

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_chrome], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no message from chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def open_page(path: Path, timeout: float = 60) -> Page:
    executable = chromium()
    if executable is None:
        raise RuntimeError("chromium is not installed: apt-get install chromium (.ci/run installs it)")
    with tempfile.TemporaryDirectory() as profile:
        pipe = _Pipe(executable, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout)

            def evaluate(expression: str):
                return pipe.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                 session=session)["result"].get("value")

            images = json.loads(evaluate("JSON.stringify(Array.from(document.images).map(i => ({complete: i.complete, "
                                         "naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight})))"))
            page = Page(images=images, title=evaluate("document.title"), text=evaluate("document.body.innerText"))
            shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
            page.screenshot = base64.b64decode(shot["data"])
            for event in pipe.events:
                method, params = event.get("method"), event.get("params", {})
                if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                    page.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
                elif method == "Runtime.exceptionThrown":
                    page.errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
                elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                    page.errors.append("log: " + params["entry"].get("text", ""))
            return page
        finally:
            pipe.close()

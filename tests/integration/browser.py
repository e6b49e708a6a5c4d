"""A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe, for tests that
must see what a browser sees: the console's messages, the page's uncaught exceptions, the browser's own log
(a resource that failed to load, a Content-Security-Policy violation), the DOM, a screenshot.

No library and no port: `--remote-debugging-pipe` speaks JSON messages ended by a NUL byte on the child's fds
3 (commands in) and 4 (answers and events out). Nothing leaves loopback: every host name resolves to nothing
and every connection goes to a proxy on 127.0.0.1 that is not there, so a page that loads anything from a
network logs an error instead of reaching it. The browser runs in a session of its own; closing it kills the
whole group, so no renderer is left behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Seconds any one DevTools answer may take (a page load included) before the test fails.
ANSWER_TIMEOUT = 15.0
WIDTH, HEIGHT = 1280, 900


class BrowserError(AssertionError):
    pass


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Visit:
    """What the browser reported while a page was open."""

    url: str
    console: list[dict] = field(default_factory=list)     # Runtime.consoleAPICalled (every type)
    exceptions: list[dict] = field(default_factory=list)  # Runtime.exceptionThrown
    log: list[dict] = field(default_factory=list)         # Log.entryAdded (network, security, ...)

    @property
    def errors(self) -> list[str]:
        """Every console error or warning, uncaught exception and error or warning of the browser's log, as text."""
        found = [f"console.{entry['type']}: " + " ".join(str(arg.get("value", arg.get("description", "")))
                                                           for arg in entry.get("args", []))
                 for entry in self.console if entry.get("type") in ("error", "warning", "assert")]
        for entry in self.exceptions:
            details = entry["exceptionDetails"]
            found.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        found += [f"log {entry['entry'].get('source')} {entry['entry']['level']}: {entry['entry'].get('text')}"
                  + (f" ({entry['entry']['url']})" if entry['entry'].get('url') else "")
                  for entry in self.log if entry["entry"].get("level") in ("error", "warning")]
        return found


class Chromium:
    """One headless Chromium; `visit(url)` opens a page in a new tab and returns what it reported."""

    def __init__(self, executable: str, profile: Path, stderr: Path):
        to_browser = os.pipe()
        from_browser = os.pipe()

        # Python's descriptors are not inherited (PEP 446): with close_fds=False the child gets 0-2 and the two
        # made inheritable here, whatever numbers the pipes have in this process (pass_fds needs 3 and 4 open here).
        def pipes_on_3_and_4() -> None:  # in the child, before exec
            os.dup2(to_browser[0], 3)
            os.dup2(from_browser[1], 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        command = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
                   "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                   "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                   "--disable-domain-reliability", "--hide-scrollbars", "--mute-audio",
                   "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
                   "--proxy-bypass-list=<-loopback>", "about:blank"]
        self._stderr = open(stderr, "wb")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
                                        close_fds=False, preexec_fn=pipes_on_3_and_4, start_new_session=True)
        os.close(to_browser[0])
        os.close(from_browser[1])
        self._out, self._in = to_browser[1], from_browser[0]
        self._buffer = b""
        self._next = 0
        self._events: list[dict] = []

    # -- the protocol ------------------------------------------------------------------------------

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = ANSWER_TIMEOUT) -> dict:
        """Send a command and return its result; events read meanwhile are kept for `events`."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data):]
        while True:
            answer = self._read(timeout, f"the answer to {method}")
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self._events.append(answer)

    def wait_for(self, method: str, session: str, timeout: float = ANSWER_TIMEOUT) -> dict:
        for index, event in enumerate(self._events):
            if event.get("method") == method and event.get("sessionId") == session:
                return self._events.pop(index)
        while True:
            event = self._read(timeout, method)
            if event.get("method") == method and event.get("sessionId") == session:
                return event
            self._events.append(event)

    def _read(self, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._in], [], [], max(0.0, left))
            if not ready:
                raise BrowserError(f"chromium sent no {what} within {timeout:.0f} s")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium closed its DevTools pipe (exit {self.process.poll()}) before {what}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _take_events(self, session: str) -> list[dict]:
        mine = [event for event in self._events if event.get("sessionId") == session]
        self._events = [event for event in self._events if event.get("sessionId") != session]
        return mine

    # -- pages -------------------------------------------------------------------------------------

    def visit(self, url: str, screenshot: Path | None = None, evaluate: dict[str, str] | None = None,
              settle: float = 0.3) -> tuple[Visit, dict[str, Any]]:
        """Open url in a new tab, wait for its load event and `settle` seconds more (timers, late errors),
        take a full-page screenshot when asked, evaluate each expression; close the tab."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                self.send(domain, session=session)
            self.send("Page.navigate", {"url": url}, session=session)
            self.wait_for("Page.loadEventFired", session)
            self.send("Runtime.evaluate", {"expression": f"new Promise(done => setTimeout(done, {int(settle * 1000)}))",
                                           "awaitPromise": True}, session=session)
            values = {name: self._value(self.send("Runtime.evaluate", {"expression": expression,
                                                                       "returnByValue": True}, session=session))
                      for name, expression in (evaluate or {}).items()}
            if screenshot is not None:
                size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
                shot = self.send("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": max(WIDTH, size["width"]), "height": size["height"], "scale": 1}},
                    session=session)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            visit = Visit(url)
            for event in self._take_events(session):
                method = event.get("method")
                if method == "Runtime.consoleAPICalled":
                    visit.console.append(event["params"])
                elif method == "Runtime.exceptionThrown":
                    visit.exceptions.append(event["params"])
                elif method == "Log.entryAdded":
                    visit.log.append(event["params"])
            return visit, values
        finally:
            self.send("Target.closeTarget", {"targetId": target})

    @staticmethod
    def _value(answer: dict) -> Any:
        if "exceptionDetails" in answer:
            raise BrowserError(f"the expression threw: {answer['exceptionDetails'].get('text')}")
        return answer["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # renderers and helpers too
        self.process.wait()
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stderr.close()

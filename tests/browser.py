"""Headless Chromium kept on this machine: every name but 127.0.0.1 resolves to nothing, and the net log
shows whether the page still tried to reach anything else. Used by the kedro-viz, MLflow UI and documentation
site tests."""

from __future__ import annotations

import contextlib
import functools
import http.server
import ipaddress
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = shutil.which("chromium")
# CI installs chromium (.ci/run), so there a missing browser fails instead of skipping unnoticed.
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true", reason="Debian's `chromium` is not installed"
)
BROWSER_TIMEOUT_S = 120

OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
    "--disable-features=NetworkTimeServiceQuerying,AutofillServerCommunication,OptimizationHints,Translate",
    # Every name but loopback resolves to nothing, so no request can leave the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


class BrowsedPage:
    """What headless Chromium rendered, and every network event it logged while doing so."""

    def __init__(self, dom: str, net_log: dict, origin: str):
        self.dom = dom
        self.net_log = net_log
        self.origin = origin

    def _events(self) -> Iterator[tuple[str, dict]]:
        names = {number: name for name, number in self.net_log["constants"]["logEventTypes"].items()}
        for event in self.net_log["events"]:
            yield names[event["type"]], event.get("params", {})

    def connections_off_machine(self) -> list[str]:
        """TCP connections and UDP datagrams to anything but loopback, and DNS queries sent anywhere."""
        leaks = []
        for name, params in self._events():
            if name in {"TCP_CONNECT_ATTEMPT", "UDP_BYTES_SENT"} and "address" in params:
                if not _is_loopback(params["address"]):
                    leaks.append(f"{name} {params['address']}")
            # UDP_CONNECT is left out: connect() on a UDP socket sends nothing (Chromium's IPv6 probe).
            elif name in {"DNS_TRANSACTION", "HOST_RESOLVER_SYSTEM_TASK", "HOST_RESOLVER_DNS_TASK"}:
                leaks.append(f"{name} {params}")
        return leaks

    def page_requests(self) -> list[str]:
        """URLs the page asked for (the document and everything it initiated), blocked or not."""
        return [
            params["url"]
            for name, params in self._events()
            if name == "URL_REQUEST_START_JOB"
            and "url" in params
            and (params.get("initiator") == self.origin or params["url"].startswith(self.origin))
        ]

    def assert_stayed_on_machine(self) -> None:
        """Nothing left the machine, and the page asked for no outside host."""
        assert self.connections_off_machine() == []
        outside_hosts = {urlsplit(url).hostname for url in self.page_requests()} - {"127.0.0.1"}
        assert not outside_hosts, f"the page reached for {outside_hosts}"


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return ipaddress.ip_address(host).is_loopback


def _load_net_log(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # Chromium leaves the event list open when it is stopped before it finishes writing.
        return json.loads(text.rstrip().rstrip(",") + "]}")


def browse(
    url: str,
    scratch: Path,
    *,
    window_size: str,
    virtual_time_budget_ms: int,
    screenshot: Path | None = None,
) -> tuple[str, dict]:
    """The DOM Chromium rendered from `url` (or, with `screenshot`, a PNG of it) and its net log."""
    assert CHROMIUM is not None, "chromium is missing: `apt-get install -y chromium` (see .ci/run)"
    scratch.mkdir(parents=True, exist_ok=True)
    net_log = scratch / "net-log.json"
    output = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    command = [
        CHROMIUM,
        *OFFLINE_FLAGS,
        f"--window-size={window_size}",
        f"--user-data-dir={scratch / 'profile'}",
        f"--log-net-log={net_log}",
        f"--virtual-time-budget={virtual_time_budget_ms}",
        *output,
        url,
    ]
    browser = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False)
    assert browser.returncode == 0, f"chromium failed:\n{browser.stderr[-4000:]}"
    return browser.stdout, _load_net_log(net_log)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """A static site in `directory` served on 127.0.0.1 (a free port) while the block runs: its origin."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

"""Test helper: the real daemon (``python -m rvm_live``) in a child process, driven through its control API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from typing import Any

from media import free_port


class Daemon:
    """``python -m rvm_live ARGS --control 127.0.0.1:PORT``; entering waits until the control API is up."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.args = [*args, "--control", f"127.0.0.1:{self.port}"]
        self.proc: subprocess.Popen[str] | None = None
        self.stderr = ""

    def __enter__(self) -> Daemon:
        self.proc = subprocess.Popen([sys.executable, "-m", "rvm_live", *self.args], stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "RVM_LIVE_OFFLINE": "1"})
        lines = []
        for line in self.proc.stderr:
            lines.append(line)
            if "control API on" in line:
                break
        self.stderr = "".join(lines)
        return self

    def get(self, path: str) -> dict[str, Any]:
        """GET ``path`` as JSON (any status)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return json.loads(err.read())

    def post(self, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait for the exit; returns the exit status (stderr is in ``self.stderr``)."""
        self.proc.send_signal(sig)
        self.stderr += self.proc.communicate(timeout=timeout)[1]
        return self.proc.returncode

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.stderr += self.proc.communicate()[1]

"""A real ``dpr-pg serve`` process on a free local port, for the service tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

_RUNNING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


class Served:
    """A server process: its base URL and every line it has printed (stdout and stderr)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url: str | None = None
        self._found = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = _RUNNING.search(line)
            if match:
                self.url = match.group(1)
                self._found.set()
        self._found.set()  # the process ended

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, limit: float = 180.0) -> None:
        self._found.wait(limit)
        if self.url is None:
            raise AssertionError(f"dpr-pg serve did not start:\n{self.output}")
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/readyz").status_code == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"dpr-pg serve never became ready:\n{self.output}")

    def stop(self) -> int:
        """SIGTERM, then the exit status: uvicorn shuts down gracefully, then re-raises the signal (-15)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(120)


def start(database_url: str | None, models: tuple[Path, Path], *args: str, ready: bool = True,
          env: dict[str, str] | None = None) -> Served:
    """``dpr-pg --database-url URL serve --port 0 ARGS`` with the given (question, passage) models.

    Without a URL the server uses the embedded PostgreSQL of ``DPR_PG_HOME`` (from ``env``).
    """
    variables = {**os.environ, "DPR_PG_QUESTION_MODEL": str(models[0]), "DPR_PG_PASSAGE_MODEL": str(models[1]),
                 "PYTHONUNBUFFERED": "1", **(env or {})}
    url = ["--database-url", database_url] if database_url else []
    process = subprocess.Popen([sys.executable, "-m", "dpr_pg.cli", *url, "serve", "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=variables)
    served = Served(process)
    if ready:
        served.wait_ready()
    return served

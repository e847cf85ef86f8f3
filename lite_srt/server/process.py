"""ServerProcess: run `lite-srt serve` as a subprocess on a free loopback port (tests, benchmarks, scripts).

The child logs to a temporary file (a pipe could fill and block it); the URL is read from its "serving ... on
URL" log line, so `--port 0` works. Stopping sends SIGTERM, the same path as a user's Ctrl-C, and kills only
if the child does not exit in time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from types import TracebackType

_URL_RE = re.compile(r"serving .* on (http://\S+) ")
# `python -m lite_srt.server.launch FLAGS` is `lite-srt serve FLAGS` (same parser) without the rest of the CLI.
DEFAULT_COMMAND = (sys.executable, "-m", "lite_srt.server.launch")
CLI_COMMAND = (sys.executable, "-m", "lite_srt.cli", "serve")


class ServerProcess:
    def __init__(
        self,
        *flags: str,
        command: tuple[str, ...] = DEFAULT_COMMAND,
        startup_timeout: float = 300.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.flags = list(flags)
        if "--port" not in self.flags:
            self.flags += ["--port", "0"]
        self.command = command
        self.startup_timeout = startup_timeout
        self.env = env
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="lite_srt_server_", suffix=".log", delete=False)
        self._final_log: str | None = None  # kept in memory once stop() removed the file

    @property
    def log_path(self) -> str:
        return self._log.name

    def log_text(self) -> str:
        if self._final_log is not None:
            return self._final_log
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def start(self) -> ServerProcess:
        """Launch and wait until /health answers."""
        return self.launch().wait_ready()

    def launch(self) -> ServerProcess:
        """Start the child without waiting (do other slow setup meanwhile, then call wait_ready)."""
        self.proc = subprocess.Popen(
            [*self.command, *self.flags],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(self.env or {})},
        )
        return self

    def wait_ready(self) -> ServerProcess:
        if self.proc is None:
            raise RuntimeError("call launch() first")
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} while starting:\n{self.log_text()[-4000:]}"
                )
            m = _URL_RE.search(self.log_text())
            if m and self._healthy(m.group(1)):
                self.url = m.group(1)
                return self
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"server not up after {self.startup_timeout:.0f} s:\n{self.log_text()[-4000:]}")

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._final_log is None:
            self._final_log = self.log_text()
            self._log.close()
            os.unlink(self._log.name)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

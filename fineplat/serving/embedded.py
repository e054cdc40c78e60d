"""Start the embedded serving pool as a real subprocess on a free local port and stop it again, so
tests and the demo exercise the same process boundary, HTTP stack and startup path as production
(where `base_url` points at vLLM instead).

    with EmbeddedServingPool(base_model="fineplat-tiny") as pool:
        pool.client().load_adapter("job-42-v1", "/path/to/adapter")
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fineplat.errors import ServingError
from fineplat.serving.client import ServingPoolClient

# Seconds to wait for the server to load its base model and answer /health; the tiny model loads in
# a few seconds, a real model from a cold disk cache in a few minutes.
DEFAULT_STARTUP_TIMEOUT_S = 180.0
# Seconds uvicorn gets to finish requests in flight after SIGTERM before the process is killed.
SHUTDOWN_GRACE_S = 15.0
_LOG_TAIL_CHARS = 4000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _temporary_log_path() -> Path:
    handle, name = tempfile.mkstemp(prefix="fineplat-serving-", suffix=".log")
    os.close(handle)
    return Path(name)


class EmbeddedServingPool:
    """`python -m fineplat.serving` in a subprocess; `url` is its root, `client()` talks to it.

    The subprocess inherits the environment (FINEPLAT_HOME decides where `fineplat-tiny` lives). If
    that model is not built yet the server builds it first, which can outlast `startup_timeout`:
    build it beforehand (`fineplat base-model build`) or pass a model directory.
    """

    def __init__(
        self,
        base_model: str = "fineplat-tiny",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        adapters: dict[str, str] | None = None,
        max_batch_size: int = 16,
        batch_window_ms: float = 5,
        torch_threads: int | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.base_model = base_model
        self.host = host
        self.port = port or free_port(host)
        self.adapters = dict(adapters or {})
        self.max_batch_size = max_batch_size
        self.batch_window_ms = batch_window_ms
        self.torch_threads = torch_threads
        self.startup_timeout = startup_timeout
        self.log_path = log_path or _temporary_log_path()
        self.env = env
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server root, e.g. http://127.0.0.1:8123 (OpenAI clients take `url + "/v1"`)."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The exact command line the pool runs (logged for reproduction)."""
        command = [
            sys.executable,
            "-m",
            "fineplat.serving",
            "--base-model",
            self.base_model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--max-batch-size",
            str(self.max_batch_size),
            "--batch-window-ms",
            str(self.batch_window_ms),
        ]
        if self.torch_threads:
            command += ["--torch-threads", str(self.torch_threads)]
        for name, path in self.adapters.items():
            command += ["--adapter", f"{name}={path}"]
        return command

    def start(self) -> EmbeddedServingPool:
        """Start the subprocess and wait until it answers /health; raise ServingError with its log if not."""
        if self._process is not None:
            raise ServingError(f"serving pool at {self.url} already started; stop() it first.")
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
            )
        client = ServingPoolClient(self.url, timeout=5)
        try:
            deadline = time.monotonic() + self.startup_timeout
            while not client.health():
                if self._process.poll() is not None:
                    code = self._process.returncode
                    self._process = None
                    raise ServingError(
                        f"serving pool exited with code {code} during startup ({' '.join(self.command())}); "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                if time.monotonic() >= deadline:
                    self.stop()
                    raise ServingError(
                        f"serving pool at {self.url} not healthy after {self.startup_timeout:g}s; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.2)
        finally:
            client.close()
        return self

    def stop(self) -> None:
        """SIGTERM (uvicorn drains requests in flight), then SIGKILL after SHUTDOWN_GRACE_S."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        """Whether the subprocess is alive."""
        return self._process is not None and self._process.poll() is None

    def client(self, timeout: float = 60) -> ServingPoolClient:
        """A client for this pool (close it, or use it as a context manager)."""
        return ServingPoolClient(self.url, timeout=timeout)

    def log_tail(self) -> str:
        """The end of the server's combined stdout/stderr, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def __enter__(self) -> EmbeddedServingPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

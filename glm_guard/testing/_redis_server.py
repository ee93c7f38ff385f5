"""A throw-away ``redis-server`` on loopback, for tests and benchmarks that need a real one.

A mocked Redis cannot show what the Lua scripts, the server clock or a dropped connection do,
so glm_guard's own tests and benchmarks run against this, and users can too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

__all__ = ["RedisServer", "free_port"]

_HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on at the moment of asking."""
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` on a free loopback port, with no persistence, stopped at exit at the latest.

    ::

        with RedisServer(password="s3cret") as server:
            backend = RedisBackend(server.url)

    ``start()`` after ``kill()`` brings it back on the same port, which is how a test plays a
    crash and a restart; ``pause()``/``resume()`` play a server that hangs.  ``config`` holds
    more ``redis.conf`` lines (TLS, a Unix socket, ACL users, cluster mode, ``replicaof``),
    sent on stdin like the password; the server still answers on its TCP port.  Needs the
    ``redis-server`` binary and the ``redis`` package (``pip install glm-guard[redis]``).
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        config: Sequence[str] = (),
    ) -> None:
        if password is not None and not password:
            raise ValueError("password must be a non-empty string or None")
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be positive, got {startup_timeout!r}")
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = found
        self.password = password
        self.port = free_port() if port is None else port
        self.startup_timeout = startup_timeout
        self.config = tuple(config)
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._owner = os.getpid()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisServer(port={self.port}, password={'***' if self.password else None}, {state})"

    @property
    def url(self) -> str:
        """``redis://`` URL of database 0, with the password when there is one."""
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""  # "/", "#" as %2F, %23
        return f"redis://{auth}{_HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        """Start the server (again, after ``kill()`` or ``stop()``) and wait until it answers."""
        if self.running:
            return self
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="glm-guard-redis-"))
        # "-": the rest of the configuration comes on stdin, so the password is not on the
        # command line, which every user of the machine can read.
        command = [self.binary, "-", "--port", str(self.port), "--bind", _HOST, "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self._dir), "--logfile", str(self._dir / "redis.log")]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        assert self._process.stdin is not None
        with self._process.stdin as config:
            config.write(f"requirepass {self.password}\n".encode() if self.password else b"")
            config.write("".join(f"{line}\n" for line in self.config).encode())
        self._owner = os.getpid()
        atexit.register(self.stop)
        self._wait_until_it_answers()
        return self

    def _wait_until_it_answers(self) -> None:
        import redis

        client = self.client(socket_timeout=0.5, retry=None)  # this loop is the retry
        deadline = time.monotonic() + self.startup_timeout
        reason = f"no answer within {self.startup_timeout:g} s"
        try:
            while self._process is not None:
                try:
                    # The pid tells our server from one that already held the port.
                    if client.info("server")["process_id"] == self._process.pid:
                        return
                    reason = "another server answers on that port"
                    break
                except redis.ConnectionError:
                    if not self.running or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
        finally:
            client.close()
        if self._process is not None and self._process.poll() is not None:
            reason = self._log_tail() or f"it exited with status {self._process.returncode}"
        self.stop()
        raise RuntimeError(f"redis-server did not start on {_HOST}:{self.port}: {reason}")

    def _log_tail(self) -> str:
        # The log is where redis-server says why it refused to start (port taken, bad option).
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            lines = (self._dir / "redis.log").read_text(errors="replace").strip().splitlines()
            return lines[-1] if lines else ""
        return ""

    def client(self, **options: object) -> redis.Redis:
        """A redis-py client of this server (the caller closes it)."""
        import redis

        return redis.Redis.from_url(self.url, **options)

    def version(self) -> str:
        """The server's version, as ``redis-server --version`` reports it."""
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=False).stdout
        return next((part[2:] for part in out.split() if part.startswith("v=")), out.strip())

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash; ``start()`` restarts it."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(5)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered, as on a hung host."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server and delete its directory; safe to call twice."""
        atexit.unregister(self.stop)
        if os.getpid() != self._owner:
            return  # a forked child inherits the exit hook, not the server
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

"""The Redis deployments people run, started on loopback for a test: TLS, ACL, socket, Sentinel, Cluster.

Each is built from :class:`~glm_guard.testing.RedisServer` (``config=`` adds the lines a
deployment needs) plus, for Sentinel, ``redis-server --sentinel`` with a config file of its
own (a sentinel rewrites it).  Every wait is bounded, and every server stops when its
context ends.  A missing binary skips, or fails under ``GLM_GUARD_REQUIRE_REDIS=1``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis

from .conftest import REDIS_PASSWORD, REQUIRE_REDIS, RedisServer, free_port

HOST = "127.0.0.1"
#: An ACL user the Sentinel and Cluster URLs name (the default user keeps the tests' password).
APP_USER = "app:app-pw"
_APP_ON_DATA_NODES = "user app on >app-pw ~* &* +@all"
#: Sentinel calls the primary by this name.
SERVICE = "glmguard"
#: INFO every 100 ms (not 10 s), hello every 200 ms (not 2 s): Sentinel turns a demoted
#: primary into a replica after 4 hello periods, so 0.8 s, not 8 s.
_FAST_SENTINEL = ("SENTINEL", "DEBUG", "INFO-PERIOD", 100, "PUBLISH-PERIOD", 200)
#: How long one deployment may take to become ready (or to fail over) before the test fails.
READY_WITHIN = 20.0


def need(binary: str) -> str:
    """The path of ``binary``; a missing one skips, or fails when Redis is required."""
    found = shutil.which(binary)
    if found is None:
        if REQUIRE_REDIS:
            pytest.fail(f"{binary} is not installed but GLM_GUARD_REQUIRE_REDIS=1")
        pytest.skip(f"{binary} is not installed")
    return found


def until(condition: Callable[[], bool], what: str, within: float = READY_WITHIN) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        time.sleep(0.05)


def started(*config: str) -> RedisServer:
    """A started server with the tests' password and ``config``; one that cannot start fails the test."""
    need("redis-server")
    return RedisServer(password=REDIS_PASSWORD, config=config).start()


# -- TLS ---------------------------------------------------------------------------------------


class Certificates(NamedTuple):
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path) -> Certificates:
    """A CA, and a server and a client certificate it signed (the server's valid for 127.0.0.1)."""
    openssl = need("openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=glm-guard test CA")  # fmt: skip
    (directory / "san.ext").write_text(f"subjectAltName=IP:{HOST},DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=glm-guard test {name}")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    names = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    return Certificates(*(directory / name for name in names))


@contextlib.contextmanager
def tls_server() -> Iterator[str]:
    """A server that speaks only TLS to clients with a certificate of its CA; yields its ``rediss://`` URL."""
    with tempfile.TemporaryDirectory(prefix="glm-guard-tls-") as name:
        certs = make_certificates(Path(name))
        port = free_port()
        config = [
            f"tls-port {port}",
            f"tls-cert-file {certs.server_cert}",
            f"tls-key-file {certs.server_key}",
            f"tls-ca-cert-file {certs.ca}",
            "tls-auth-clients yes",
        ]
        with started(*config):
            query = f"ssl_ca_certs={certs.ca}&ssl_certfile={certs.client_cert}&ssl_keyfile={certs.client_key}"
            yield f"rediss://:{REDIS_PASSWORD}@{HOST}:{port}/0?ssl_cert_reqs=required&{query}"


# -- a Unix socket, an ACL user -----------------------------------------------------------------


@contextlib.contextmanager
def unix_server(scheme: str = "redis+unix") -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="glm-guard-sock-") as name:
        socket = Path(name) / "redis.sock"
        with started(f"unixsocket {socket}", "unixsocketperm 700"):
            yield f"{scheme}://:{REDIS_PASSWORD}@{socket}?db=1"


@contextlib.contextmanager
def acl_server(user: str, password: str, rules: str) -> Iterator[RedisServer]:
    """A server with one more user, ``user``, allowed only ``rules`` (ACL syntax)."""
    with started(f"user {user} on >{password} {rules}") as server:
        yield server


# -- Sentinel ----------------------------------------------------------------------------------


class SentinelProcess:
    """``redis-server --sentinel`` watching ``primary_port`` as :data:`SERVICE`, password on both sides."""

    def __init__(self, directory: Path, primary_port: int) -> None:
        self.port = free_port()
        self.config = directory / f"sentinel-{self.port}.conf"
        self.config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {HOST}",
                    f"dir {directory}",
                    f"logfile {directory / f'sentinel-{self.port}.log'}",
                    f"requirepass {REDIS_PASSWORD}",
                    "user app on >app-pw +@all",
                    f"sentinel monitor {SERVICE} {HOST} {primary_port} 1",
                    f"sentinel auth-pass {SERVICE} {REDIS_PASSWORD}",
                    f"sentinel down-after-milliseconds {SERVICE} 10000",  # only the forced failover, no other
                    f"sentinel failover-timeout {SERVICE} 5000",
                    "",
                ]
            )
        )
        self._process = subprocess.Popen(
            [need("redis-server"), str(self.config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.client = redis.Redis(HOST, self.port, password=REDIS_PASSWORD, socket_timeout=2, retry=None)

    def stop(self) -> None:
        self.client.close()
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)


class SentinelGroup(NamedTuple):
    url: str
    servers: tuple[RedisServer, RedisServer]  # the first primary, and its replica
    sentinels: tuple[SentinelProcess, ...]

    def primary_port(self) -> int:
        return int(self.sentinels[0].client.sentinel_get_master_addr_by_name(SERVICE)[1])

    def failover(self) -> int:
        """``SENTINEL FAILOVER``; returns the new primary's port once it takes writes."""
        old = self.primary_port()
        sentinel = self.sentinels[0].client
        # NOGOODSLAVE until the sentinel has heard from the replica lately: asked again until it starts.
        until(lambda: sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE), "the sentinel to start a failover")
        until(lambda: self.primary_port() != old, "the sentinels to name a new primary")
        new = self.primary_port()
        server = next(each for each in self.servers if each.port == new)
        with server.client() as client:
            until(lambda: client.info("replication")["role"] == "master", "the new primary to take writes")
        return new


@contextlib.contextmanager
def sentinel_group(scheme: str = "redis+sentinel") -> Iterator[SentinelGroup]:
    """One primary, one replica, one sentinel; yields a ``redis+sentinel://`` URL naming two sentinels.

    Every process stops before its directory is removed (the stack closes first).

    The first sentinel the URL names is a port nobody listens on, so redis-py must move on to
    the next.  One live sentinel only: with the periods shortened, a second one could turn the
    new primary back into a replica before it heard of the failover.
    """
    with tempfile.TemporaryDirectory(prefix="glm-guard-sentinel-") as name, contextlib.ExitStack() as stack:
        # A replica syncs at once, and a stopped primary does not wait for its replica's lag.
        common = (
            f"masterauth {REDIS_PASSWORD}",
            "repl-diskless-sync-delay 0",
            "shutdown-timeout 0",
            _APP_ON_DATA_NODES,
        )
        primary = stack.enter_context(started(*common))
        replica = stack.enter_context(started(*common, f"replicaof {HOST} {primary.port}"))
        with replica.client() as client:  # a sentinel learns the replica from the primary's INFO at once
            until(lambda: client.info("replication")["master_link_status"] == "up", "the replica to sync")
        watcher = SentinelProcess(Path(name), primary.port)
        stack.callback(watcher.stop)
        until(lambda: watcher.client.execute_command(*_FAST_SENTINEL), "the sentinel to answer")
        until(lambda: len(watcher.client.sentinel_slaves(SERVICE)) == 1, "the sentinel to see the replica")
        nodes = f"{HOST}:{free_port()},{HOST}:{watcher.port}"
        yield SentinelGroup(f"{scheme}://{APP_USER}@{nodes}/{SERVICE}", (primary, replica), (watcher,))


# -- Cluster -----------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster(scheme: str = "redis+cluster", primaries: int = 3) -> Iterator[str]:
    """A Cluster of ``primaries`` primaries (no replicas), made by ``redis-cli --cluster create``."""
    cli = need("redis-cli")
    config = ["cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 2000", _APP_ON_DATA_NODES]
    with contextlib.ExitStack() as stack:
        # A bus port of its own: port + 10000 (the default) may be taken, or past 65535.
        nodes = [stack.enter_context(started(*config, f"cluster-port {free_port()}")) for _ in range(primaries)]
        addresses = [f"{HOST}:{node.port}" for node in nodes]
        subprocess.run(
            [cli, "--no-auth-warning", "-a", REDIS_PASSWORD, "--cluster", "create", *addresses, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for node in nodes:
            with node.client() as client:
                until(lambda c=client: c.cluster("info")["cluster_state"] == "ok", "every node to see the cluster")
        yield f"{scheme}://{APP_USER}@{','.join(addresses[:2])}"


def info_commands(servers: list[Any]) -> set[str]:
    """Every command the servers ran so far (INFO commandstats, scripts' commands included)."""
    found: set[str] = set()
    for server in servers:
        with server.client() as client:
            found |= {name.removeprefix("cmdstat_") for name in client.info("commandstats")}
    return found

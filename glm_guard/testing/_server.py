"""The asyncio server: accepts connections, serves keep-alive requests, drains on stop.

Written on asyncio streams rather than ``http.server`` so hundreds of concurrent
connections cost no threads, and shutdown can close idle keep-alive connections at once
while requests in flight get a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ._catalogue import error_message
from ._chat import ChatEndpoint, send_error
from ._engine import Engine
from ._http import BadRequest, ClientGone, read_request

__all__ = ["Server"]

log = logging.getLogger("glm_guard.testing.simulator")


@dataclass(slots=True, eq=False)
class _Conn:
    task: asyncio.Task[None]
    writer: asyncio.StreamWriter
    busy: bool = False


class Server:
    """Serves one simulator's endpoint until asked to stop; one instance per start."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._endpoint = ChatEndpoint(engine, lambda: self._stopping)
        self._conns: set[_Conn] = set()
        self._stopping = False

    async def run(self, stop: asyncio.Future[float], listening: Callable[[int], None]) -> None:
        """Listen, report the bound port to ``listening``, and serve until ``stop`` resolves.

        ``stop``'s result is the grace period: how long requests in flight may still run
        before their handlers are cancelled.
        """
        cfg = self._engine.config
        server = await asyncio.start_server(self._on_connection, cfg.host, cfg.port, backlog=1024)
        listening(int(server.sockets[0].getsockname()[1]))
        grace = cfg.stop_timeout
        try:
            grace = await stop
        finally:
            await self._drain(server, grace)

    async def _drain(self, server: asyncio.Server, grace: float) -> None:
        server.close()
        self._stopping = True
        for conn in list(self._conns):
            if not conn.busy:
                # Closing feeds EOF to the reader, so idle keep-alive handlers exit
                # normally; cancelling them would trip a 3.11 asyncio logging bug.
                conn.writer.close()
        pending = {c.task for c in self._conns}
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=2.0)
        await server.wait_closed()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(task, writer)
        self._conns.add(conn)
        try:
            cfg = self._engine.config
            while not self._stopping:
                try:
                    async with asyncio.timeout(cfg.idle_timeout):
                        req = await read_request(reader, writer, cfg.max_body_bytes)
                except TimeoutError:
                    break
                except BadRequest as exc:
                    await send_error(writer, exc.status, "1210", exc.reason, keep=False)
                    break
                if req is None:
                    break
                conn.busy = True
                try:
                    keep = await self._endpoint.handle(req, writer)
                finally:
                    conn.busy = False
                if not keep:
                    break
                cfg = self._engine.config
        except (ClientGone, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only the end of the grace period cancels us. Finishing normally keeps
            # asyncio's client_connected_cb callback from logging a bogus error.
            pass
        except Exception:  # a simulator bug must not kill the server or leak the socket
            log.exception("GLM simulator handler failed")
            await send_error(writer, 500, "500", error_message("500"), keep=False)
        finally:
            self._conns.discard(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

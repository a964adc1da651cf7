"""Opt-in event-loop heartbeat for the apiworkload diagnostics sidecar.

Each worker process sends a tiny UDP datagram to the sidecar every 50 ms from a task on
its own event loop. While the loop is frozen (a blocking call or CPU-bound work in an
async handler) the datagrams stop, so the sidecar sees every stall of every worker,
exactly, even where its canary requests cannot reach (gunicorn workers share one accept
queue, so a canary connection may never land on the stalled worker).

Use it from the app's startup, e.g. with FastAPI::

    import apiworkload_heartbeat

    @asynccontextmanager
    async def lifespan(app):
        apiworkload_heartbeat.start()
        yield

It never raises into the app and costs one non-blocking sendto() per interval. The
sidecar address comes from ``APIW_HEARTBEAT_ADDR`` (default ``127.0.0.1:9902``).
"""

from __future__ import annotations

import asyncio
import os
import socket

__all__ = ["start"]


def start(address: str | None = None, interval: float = 0.05) -> "asyncio.Task | None":
    """Starts the heartbeat on the running event loop; returns its task (None on error)."""
    try:
        spec = address or os.environ.get("APIW_HEARTBEAT_ADDR", "127.0.0.1:9902")
        host, _, port = spec.rpartition(":")
        target = (host or "127.0.0.1", int(port))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
    except (OSError, ValueError, RuntimeError):
        return None
    pid = os.getpid()

    async def beat() -> None:
        seq = 0
        while True:
            seq += 1
            try:
                sock.sendto(b"apiw1 %d %d %d" % (pid, seq, int(interval * 1000)), target)
            except OSError:
                pass  # no sidecar yet, or a full buffer: never disturb the app
            await asyncio.sleep(interval)

    return loop.create_task(beat())

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

Once a second it also sends the container's CFS counters from its cgroup's ``cpu.stat``
(``nr_periods``, ``nr_throttled``, throttled time): only a process of the app's own
container can read them, and they show the CPU quota pausing the app in pauses each too
short to look like a stall.
"""

from __future__ import annotations

import asyncio
import os
import socket

__all__ = ["bye", "start"]

# Where cgroup hierarchies are mounted: v2, then v1's cpu controller (alone or with cpuacct).
_CGROUP_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu")


def _cpu_stat_paths() -> "list[str]":
    """This process's own cgroup's ``cpu.stat`` first (from ``/proc/self/cgroup``: a process
    outside a container, or one whose runtime mounts the whole hierarchy), then each
    mount's root (a container's own cgroup, where the runtime mounts only that)."""
    own = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                path = path.strip("/")
                if not path:
                    continue
                if controllers == "":  # v2
                    own.append("/sys/fs/cgroup/%s/cpu.stat" % path)
                elif "cpu" in controllers.split(","):  # v1
                    mount = "/sys/fs/cgroup/" + controllers
                    own.append("%s/%s/cpu.stat" % (mount, path))
    except (OSError, ValueError):
        pass
    return own + ["%s/cpu.stat" % root for root in _CGROUP_ROOTS]


def _cpu_stat() -> "tuple[int, int, int] | None":
    """(nr_periods, nr_throttled, throttled microseconds) of this process's cgroup, if
    readable (v1's throttled_time is in ns)."""
    for path in _cpu_stat_paths():
        try:
            with open(path, "rb") as f:
                fields = dict(line.split(None, 1) for line in f.read().splitlines() if b" " in line)
        except (OSError, ValueError):
            continue
        try:
            if b"throttled_usec" in fields:
                usec = int(fields[b"throttled_usec"])
            else:
                usec = int(fields[b"throttled_time"]) // 1000
            return int(fields[b"nr_periods"]), int(fields[b"nr_throttled"]), usec
        except (KeyError, ValueError):
            continue
    return None


def _target(address: "str | None") -> "tuple[str, int]":
    """The sidecar's (host, port): ``address``, else ``APIW_HEARTBEAT_ADDR``, else the default."""
    spec = address or os.environ.get("APIW_HEARTBEAT_ADDR", "127.0.0.1:9902")
    host, _, port = spec.rpartition(":")
    return host or "127.0.0.1", int(port)


def bye(address: "str | None" = None) -> None:
    """Tells the sidecar this process's loop has stopped (it forgets the worker rather
    than take its silence for a stall)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"apiw1 %d 0 0" % os.getpid(), _target(address))
    except (OSError, ValueError):
        pass


def start(address: str | None = None, interval: float = 0.05) -> "asyncio.Task | None":
    """Starts the heartbeat on the running event loop; returns its task (None on error)."""
    try:
        target = _target(address)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
    except (OSError, ValueError, RuntimeError):
        return None
    pid = os.getpid()

    every_second = max(1, round(1.0 / interval))

    async def beat() -> None:
        seq = 0
        while True:
            seq += 1
            try:
                sock.sendto(b"apiw1 %d %d %d" % (pid, seq, int(interval * 1000)), target)
                if seq % every_second == 0:
                    stat = _cpu_stat()
                    if stat is not None:
                        sock.sendto(b"apiw1cpu %d %d %d %d" % ((pid,) + stat), target)
            except OSError:
                pass  # no sidecar yet, or a full buffer: never disturb the app
            await asyncio.sleep(interval)

    return loop.create_task(beat())

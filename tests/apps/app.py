"""A FastAPI service with the failure modes the sidecar must see.

- GET /healthz: cheap, in-process (the canary endpoint).
- GET /block?seconds=S: an async handler that calls time.sleep, freezing the event loop.
- GET /cpu?seconds=S: an async handler that burns CPU for S seconds.
- POST /parse: parses a JSON body in the handler (large bodies stall the loop).
- GET /sleep?seconds=S: an async handler that awaits S seconds (I/O-bound work).
- GET /inflight: the app's own exact count of requests in flight, and its time
  integral (what the sidecar's in-flight measurement is compared with).

STARTUP_DELAY_SECONDS in the environment delays the import (a slow-starting app).
"""

import asyncio
import json
import os
import sys
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

# A slow start, as heavy imports or a model load make one (the probe tests set it).
time.sleep(float(os.environ.get("STARTUP_DELAY_SECONDS", "0")))

# The sidecar's opt-in heartbeat, from the repo (an app would vendor or install it).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "sidecar", "python"))
import apiworkload_heartbeat  # noqa: E402


@asynccontextmanager
async def lifespan(app):
    if os.environ.get("APIW_HEARTBEAT_ADDR"):
        apiworkload_heartbeat.start()
    yield


api = FastAPI(lifespan=lifespan)


class InFlight:
    """Pure ASGI middleware: requests in flight in this process, from the moment the
    server hands a request to the app until its last response bytes are handed back,
    and the exact time integral of that count."""

    def __init__(self, app):
        self.app = app
        self.current = 0
        self.integral = 0.0
        self.changed = time.monotonic()

    def _move(self, delta):
        now = time.monotonic()
        self.integral += self.current * (now - self.changed)
        self.changed = now
        self.current += delta

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self._move(+1)
        try:
            await self.app(scope, receive, send)
        finally:
            self._move(-1)

    def snapshot(self):
        self._move(0)
        return {"current": self.current, "integral_seconds": self.integral}


@api.get("/inflight")
async def inflight_stats():
    return app.snapshot()


@api.get("/sleep")
async def sleep(seconds: float = 0.1):
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@api.get("/healthz")
async def healthz():
    return {"ok": True}


@api.get("/block")
async def block(seconds: float = 1.0):
    time.sleep(seconds)  # the bug under test: blocking call in async code
    return {"blocked": seconds}


@api.get("/cpu")
async def cpu(seconds: float = 1.0):
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return {"iterations": n}


@api.post("/parse")
async def parse(request: Request):
    body = await request.body()
    started = time.perf_counter()
    data = json.loads(body)  # synchronous: the loop is frozen while it runs
    return {
        "items": len(data) if hasattr(data, "__len__") else 1,
        "parse_seconds": time.perf_counter() - started,
    }


# Outbound calls, pooled or not (the classic: a new HTTP client per request).
import httpx  # noqa: E402

_shared_client = httpx.AsyncClient()


@api.get("/outbound")
async def outbound(url: str, n: int = 1, pooled: bool = True):
    for _ in range(n):
        if pooled:
            await _shared_client.get(url)
        else:
            async with httpx.AsyncClient() as client:
                await client.get(url)
    return {"calls": n, "pooled": pooled}


# What servers run (`app:app`): the API behind the in-flight counter.
app = InFlight(api)

"""A WSGI app for the servers that need one (gunicorn's sync and gthread workers, granian
with `--interface wsgi`): the same /healthz and /block as app.py, standard library only.

- GET /healthz: cheap (the probes' endpoint).
- GET /block?seconds=S: holds the worker for S seconds (a slow request).
"""

import json
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/healthz":
        payload = {"ok": True}
    elif path == "/block":
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("seconds", ["1"])[0])
        time.sleep(seconds)
        payload = {"blocked": seconds}
    else:
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"detail": "Not Found"}']
    body = json.dumps(payload).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]

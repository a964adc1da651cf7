"""uvicorn-worker that applies gunicorn's --worker-connections as uvicorn's limit.

Written into the pod by the apiworkload operator (the pod template's
`apiworkload.io/uvicorn-worker` annotation, as a downward API file). uvicorn-worker
ignores --worker-connections, so a gunicorn worker would otherwise take on every
request and queue the excess until the load balancer times out; with the limit,
uvicorn answers a fast 503 beyond it (counting open connections and running
requests, as `uvicorn --limit-concurrency` does).
"""

from uvicorn_worker import UvicornWorker as _UvicornWorker


class UvicornWorker(_UvicornWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.limit_concurrency = self.cfg.worker_connections

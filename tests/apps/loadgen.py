"""Bounded, continuous HTTP load for the rollout tests: a few threads send GETs, each on
a new connection (as a balancer opening connections would, and so that every request
is routed by kube-proxy's current rules), until a stop file appears or a time limit.

usage: loadgen.py URL STOP_FILE MAX_SECONDS MAX_REQUESTS
Prints one JSON line: {"sent": …, "ok": …, "failed": …, "errors": {"<error>": count}}.
"""

import json
import os
import sys
import threading
import time
import urllib.request

THREADS = 4
PAUSE = 0.02  # between a thread's requests: at most ~200 requests/s in all


def main():
    url, stop_file, max_seconds, max_requests = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    deadline = time.monotonic() + max_seconds
    lock = threading.Lock()
    counts = {"sent": 0, "ok": 0, "failed": 0, "errors": {}}

    def worker():
        while time.monotonic() < deadline and not os.path.exists(stop_file):
            with lock:
                if counts["sent"] >= max_requests:
                    return
                counts["sent"] += 1
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    response.read()
                    ok = response.status == 200
                    error = None if ok else f"HTTP {response.status}"
            except Exception as e:  # refused, reset, timeout, 5xx: each a dropped request
                ok, error = False, type(e).__name__ + ": " + str(getattr(e, "reason", e))
            with lock:
                if ok:
                    counts["ok"] += 1
                else:
                    counts["failed"] += 1
                    counts["errors"][error] = counts["errors"].get(error, 0) + 1
            time.sleep(PAUSE)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(counts))


if __name__ == "__main__":
    main()

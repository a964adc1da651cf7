"""Bounded, continuous HTTP load for the rollout tests: a few threads send GETs, each on
a new connection (as a balancer opening connections would, and so that every request
is routed by kube-proxy's current rules), until a stop file appears or a time limit.

usage: loadgen.py URL STOP_FILE MAX_SECONDS MAX_REQUESTS [SLOW_URL SLOW_THREADS]
Prints one JSON line: {"sent": …, "ok": …, "failed": …, "errors": {"<error>": count}}.
With SLOW_URL, SLOW_THREADS more threads send it back to back (requests that take a
while, so some are always in flight when a pod is told to stop; they may take up to 30 s)
and the line has their counts under "slow".
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
    slow_url, slow_threads = (sys.argv[5], int(sys.argv[6])) if len(sys.argv) > 6 else (None, 0)
    deadline = time.monotonic() + max_seconds
    lock = threading.Lock()
    counts = {"sent": 0, "ok": 0, "failed": 0, "errors": {}}
    slow_counts = {"sent": 0, "ok": 0, "failed": 0, "errors": {}}

    def worker(url, counts, pause, timeout):
        while time.monotonic() < deadline and not os.path.exists(stop_file):
            with lock:
                if counts["sent"] >= max_requests:
                    return
                counts["sent"] += 1
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
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
            time.sleep(pause)

    threads = [threading.Thread(target=worker, args=(url, counts, PAUSE, 5)) for _ in range(THREADS)]
    threads += [threading.Thread(target=worker, args=(slow_url, slow_counts, 0, 30)) for _ in range(slow_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if slow_url:
        counts["slow"] = slow_counts
    print(json.dumps(counts))


if __name__ == "__main__":
    main()

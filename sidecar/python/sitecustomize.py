"""The apiworkload event-loop heartbeat, with no change to the app.

The operator mounts this file and ``apiworkload_heartbeat.py`` on the app's Python path
(``PYTHONPATH``) when ``spec.diagnostics.loopHeartbeat`` is true; Python imports
``sitecustomize`` at start-up in every process, before the server. Whenever an event
loop starts running on a process's main thread for the first time (each uvicorn,
gunicorn-uvicorn, granian or hypercorn worker), the heartbeat starts on it; when a loop stops running, the sidecar
is told, so a process that ran a loop for a while (gunicorn's master does) or a worker
shutting down is not taken for a stalled worker. Turning the field off removes the file.

It never raises into the app: anything unexpected leaves the app exactly as it was.
"""

try:
    import asyncio
    import asyncio.events as _events
    import threading as _threading

    _set_running_loop = _events._set_running_loop
    _started = set()

    def _bye():
        try:
            import apiworkload_heartbeat

            apiworkload_heartbeat.bye()
        except Exception:  # noqa: BLE001 - never disturb the app (also run at exit)
            pass

    def _start(loop):
        import apiworkload_heartbeat

        apiworkload_heartbeat.start()

    def _watching_set_running_loop(loop):
        _set_running_loop(loop)
        try:
            # The worker's loop runs on its main thread; a loop a library runs in another
            # thread would otherwise beat for the same process and hide a stall.
            if _threading.current_thread() is not _threading.main_thread():
                return
            if loop is None:
                _bye()
            elif id(loop) not in _started:
                _started.add(id(loop))
                loop.call_soon(_start, loop)
        except Exception:  # noqa: BLE001 - never disturb the app
            pass

    _events._set_running_loop = _watching_set_running_loop
    asyncio._set_running_loop = _watching_set_running_loop

    def _bye_at_exit():
        if _started:
            _bye()

    # A worker that exits (gunicorn's recycling after max-requests) may never stop its
    # loop: uvicorn, for one, re-raises SIGTERM inside it. An exit through Python still
    # runs this; a process killed by a signal is forgotten by the sidecar after 60 s.
    import atexit as _atexit

    _atexit.register(_bye_at_exit)
except Exception:  # noqa: BLE001 - never disturb the app
    pass

"""The team's worker: counts units of work in the store, one a second; stops on SIGTERM."""

import signal
import sys
import time

sys.path.insert(0, "/app/shared")
import store  # noqa: E402

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("worker started", flush=True)
while True:
    try:
        store.command("INCR", "work")
    except OSError as exc:
        print(f"store: {exc}", flush=True)
    time.sleep(1)

"""The schema migration, run once per release as a replicated job on the API's image."""

import os
import sys
import time

sys.path.insert(0, "/app/shared")
import store  # noqa: E402

target = os.environ.get("SCHEMA", "1")
for _ in range(30):  # the store may still be starting
    try:
        store.command("SET", "schema", target)
        break
    except OSError:
        time.sleep(1)
else:
    sys.exit("store did not answer")
print(f"schema migrated to {target}", flush=True)

"""The user's task container for the TaskAPI test: reads its job spec (CORTEX_TASK_SPEC), writes
what it saw to ``task-<job id>.json`` in the working directory, then does what ``config`` says:
``sleep`` seconds, ``oom`` (SIGKILL itself, as the OOM killer would), write ``noise`` characters
to stderr on one line (as a progress bar does), or exit with ``exit``."""

import json
import os
import signal
import sys
import time

with open(os.environ["CORTEX_TASK_SPEC"]) as f:
    spec = json.load(f)
config = spec.get("config") or {}
seen = {"spec": spec, "env": {k: os.environ.get(k) for k in ("CORTEX_TASK_SPEC", "CORTEX_JOB_SPEC", "CORTEX_VERSION",
                                                               "CORTEX_API_BASE_URL", "CORTEX_PORT")},
        "pid": os.getpid()}
with open(f"task-{spec['job_id']}.json", "w") as f:
    json.dump(seen, f)
print("task says goodbye", file=sys.stderr, flush=True)
time.sleep(float(config.get("sleep", 0)))
if config.get("noise"):
    print("\r".join(["progress"] * (int(config["noise"]) // 9)), file=sys.stderr, flush=True)
if config.get("oom"):
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(config.get("exit", 0)))

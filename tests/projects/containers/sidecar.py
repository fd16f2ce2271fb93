"""A second container of the pod: it shares the replica's scratch directory (the seeds' /mnt)."""

import os
import signal
import sys
import time

path = os.path.join(os.environ["CORTEX_SCRATCH_DIR"], "sidecar")
with open(path, "w") as f:
    f.write(str(os.getpid()))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(1)

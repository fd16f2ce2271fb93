"""A sync RunPod worker whose job may wait for a file (``input["gate"]``) before it returns:
the tests hold the worker busy with it while other jobs line up."""

import os
import time

import runpod


def handler(job):
    started = time.time()
    gate = job["input"].get("gate")
    deadline = time.monotonic() + 30
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"n": job["input"].get("n"), "started": started}


runpod.serverless.start({"handler": handler})

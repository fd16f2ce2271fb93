"""A sync RunPod worker reporting progress, from the handler and from a thread it starts."""

import threading
import time

import runpod
from runpod.serverless.modules.rp_progress import progress_update


def handler(job):
    steps = job["input"].get("steps", 2)
    for step in range(1, steps + 1):
        runpod.serverless.progress_update(job, f"Update {step}/{steps}")
    helper = threading.Thread(target=progress_update, args=(job, {"from": "thread"}))
    helper.start()
    helper.join()
    runpod.serverless.progress_update(job, {"not json": object()})  # dropped, never fatal
    time.sleep(job["input"].get("sleep", 0))
    return f"Hello, {job['input'].get('name', 'World')}!"


runpod.serverless.start({"handler": handler})

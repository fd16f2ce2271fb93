"""A sync RunPod worker that leaves a thread behind to report progress after the job returned."""

import threading
import time

import runpod


def report_late(job, delay):
    time.sleep(delay)
    runpod.serverless.progress_update(job, "late progress")


def handler(job):
    runpod.serverless.progress_update(job, "working")
    time.sleep(job["input"].get("sleep", 0))
    threading.Thread(target=report_late, args=(job, job["input"].get("late", 0.3)), daemon=True).start()
    return {"done": job["input"].get("n")}


runpod.serverless.start({"handler": handler})

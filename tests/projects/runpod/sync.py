"""A plain sync RunPod worker: echoes the job, or returns ``input["return"]`` exactly as given."""

import os
import sys
import threading
import time

import runpod


def handler(job):
    job_input = job["input"]
    if "return" in job_input:
        return job_input["return"]
    if job_input.get("not_json"):
        return {"value": object()}
    time.sleep(job_input.get("sleep", 0))
    if "wait_file" in job_input:  # holds the worker until the test creates the file
        deadline = time.monotonic() + 30
        while not os.path.exists(job_input["wait_file"]) and time.monotonic() < deadline:
            time.sleep(0.01)
    return {
        "id": job["id"],
        "keys": sorted(job),
        "input": job_input,
        "argv": sys.argv[1:],
        "cwd": os.path.basename(os.getcwd()),
        "main": sys.modules["__main__"].__dict__.get("MARKER"),
        "thread": threading.current_thread().name,
    }


MARKER = "sync.py is __main__"

runpod.serverless.start({"handler": handler})

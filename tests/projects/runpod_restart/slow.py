"""A sync RunPod worker that sleeps ``input["sleep"]`` seconds and says which process ran it."""

import os
import time

import runpod


def handler(job):
    time.sleep(job["input"].get("sleep", 0))
    return {"n": job["input"].get("n"), "pid": os.getpid()}


runpod.serverless.start({"handler": handler})

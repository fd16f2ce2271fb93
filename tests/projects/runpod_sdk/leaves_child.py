"""A sync RunPod worker whose job starts a process and leaves it running, as real workers' helper
processes do: stopping the worker must end it too."""

import subprocess

import runpod

children = []


def handler(job):
    child = subprocess.Popen(["sleep", "600"])
    children.append(child)
    return {"child": child.pid}


runpod.serverless.start({"handler": handler})

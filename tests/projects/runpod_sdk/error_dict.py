"""A RunPod worker that reports failures by returning ``{"error": ...}``."""

import runpod


def handler(job):
    job_input = job["input"]
    if job_input.get("only_error"):
        return {"error": "nothing to do"}
    if not job_input.get("ok"):
        return {"error": "temperature must be a float", "hint": "send 0.7", "refresh_worker": False}
    return {"fine": True}


runpod.serverless.start({"handler": handler})

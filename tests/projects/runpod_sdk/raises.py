"""A RunPod worker whose handler raises."""

import runpod


def handler(job):
    raise ValueError(f"cannot handle {job['input']['name']}")


runpod.serverless.start({"handler": handler})

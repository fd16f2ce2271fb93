"""A RunPod worker whose config asks for a fresh worker after every job."""

import runpod


def handler(job):
    if job["input"].get("fail"):
        raise RuntimeError("failed once")
    return "done"


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler, "refresh_worker": True})

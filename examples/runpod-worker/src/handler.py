"""A RunPod serverless worker, unchanged from what runs on RunPod: it reverses text and reports
progress on the way."""

import runpod


def handler(job):
    text = job["input"].get("text", "")
    runpod.serverless.progress_update(job, "reversing")
    return {"reversed": text[::-1], "words": len(text.split())}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})

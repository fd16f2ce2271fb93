"""A sync generator RunPod worker (streams; no aggregation)."""

import time

import runpod


def handler(job):
    job_input = job["input"]
    for i in range(job_input.get("count", 3)):
        if i == job_input.get("raise_at"):
            raise RuntimeError("generator broke")
        if i == job_input.get("error_at"):
            yield {"error": {"message": "bad item", "code": 7}}
        if i == job_input.get("not_json_at"):
            yield {1, 2}
        yield f"item {i}"
        time.sleep(job_input.get("pause", 0))


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})

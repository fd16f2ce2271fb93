"""An async generator RunPod worker."""

import asyncio

import runpod

closed = []


async def handler(job):
    job_input = job["input"]
    try:
        for i in range(job_input.get("count", 3)):
            await asyncio.sleep(job_input.get("pause", 0))
            yield {"token": i}
        if job_input.get("raise"):
            raise KeyError("missing")
    finally:
        closed.append(job["id"])


runpod.serverless.start({"handler": handler, "return_aggregate_stream": False})

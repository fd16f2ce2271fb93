"""An async RunPod worker, started the way the docs' concurrent-handler example does."""

import asyncio
import threading

from runpod.serverless import progress_update, start

running = 0


async def handler(job):
    global running
    job_input = job["input"]
    running += 1
    try:
        if job_input.get("progress"):
            progress_update(job, job_input["progress"])
        await asyncio.sleep(job_input.get("sleep", 0))
        return {"id": job["id"], "running_with": running, "thread": threading.current_thread().name}
    except asyncio.CancelledError:
        job_input["cancelled"] = True  # the handler sees its cancellation, as under the SDK
        raise
    finally:
        running -= 1


if __name__ == "__main__":
    start({"handler": handler})

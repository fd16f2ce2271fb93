"""An async RunPod worker bounded by its concurrency_modifier; each job reports the most jobs it
saw running at once in this process."""

import argparse
import asyncio
import os

import runpod

parser = argparse.ArgumentParser()
parser.add_argument("--max_concurrency", type=int, default=2)
args, _ = parser.parse_known_args()
running = 0


def concurrency_modifier(current):
    return min(current + 1, args.max_concurrency)


async def handler(job):
    global running
    running += 1
    seen = running
    try:
        await asyncio.sleep(job["input"].get("sleep", 0))
        return {"running_with": max(seen, running), "pid": os.getpid()}
    finally:
        running -= 1


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier})

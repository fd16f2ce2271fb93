"""An async RunPod worker with a concurrency modifier bounded by its own command-line flag."""

import argparse
import asyncio

import runpod

parser = argparse.ArgumentParser()
parser.add_argument("--max_concurrency", type=int, default=2)
args, _ = parser.parse_known_args()


def concurrency_modifier(current):
    return min(current + 1, args.max_concurrency)


async def handler(job):
    await asyncio.sleep(0)
    return {"max": args.max_concurrency}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier})

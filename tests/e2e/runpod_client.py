"""An unchanged RunPod client program: ``runpod.Endpoint`` / ``runpod.AsyncioEndpoint`` pointed at
inferd only through ``RUNPOD_ENDPOINT_BASE_URL`` (read by the SDK at import, so it runs in its own
process). ``python runpod_client.py <scenario> <endpoint> [json input]`` prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp
import runpod

runpod.api_key = "anything"


def run_sync(endpoint: str, payload: object) -> object:
    return runpod.Endpoint(endpoint).run_sync(payload, timeout=60)


def run_and_poll(endpoint: str, payload: object) -> object:
    job = runpod.Endpoint(endpoint).run(payload)
    return {"id": job.job_id, "output": job.output(timeout=60), "status": job.status()}


def stream(endpoint: str, payload: object) -> object:
    job = runpod.Endpoint(endpoint).run(payload)
    return {"chunks": list(job.stream()), "status": job.status()}


def cancel(endpoint: str, payload: object) -> object:
    job = runpod.Endpoint(endpoint).run(payload)
    return {"cancel": job.cancel(), "status": job.status()}


def health(endpoint: str, payload: object) -> object:
    return runpod.Endpoint(endpoint).health()


def purge(endpoint: str, payload: object) -> object:
    return runpod.Endpoint(endpoint).purge_queue()


async def asyncio_client(endpoint: str, payload: object) -> object:
    async with aiohttp.ClientSession() as session:
        ep = runpod.AsyncioEndpoint(endpoint, session)
        job = await ep.run(payload)
        output = await job.output(timeout=60)
        chunks = [chunk async for chunk in job.stream()]
        return {"status": await job.status(), "output": output, "chunks": chunks, "health": await ep.health()}


SCENARIOS = {"run_sync": run_sync, "run": run_and_poll, "stream": stream, "cancel": cancel, "health": health,
             "purge": purge}

if __name__ == "__main__":
    scenario, name = sys.argv[1], sys.argv[2]
    given = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    if scenario == "asyncio":
        result = asyncio.run(asyncio_client(name, given))
    else:
        result = SCENARIOS[scenario](name, given)
    print(json.dumps(result))

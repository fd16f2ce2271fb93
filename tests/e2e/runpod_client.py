"""An unchanged RunPod client program: ``runpod.Endpoint`` / ``runpod.AsyncioEndpoint`` pointed at
inferd only through ``RUNPOD_ENDPOINT_BASE_URL`` (read by the SDK at import, so it runs in its own
process). ``python runpod_client.py <scenario> <endpoint> [json input]`` prints one JSON line;
``python runpod_client.py many '[[scenario, endpoint, input], ...]'`` runs several at once (one
thread each: the SDK's import costs a second or two per process) and prints the list of their
results, each ``{"result": ...}`` or ``{"exception": "..."}``."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

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


def cancel_then_stream(endpoint: str, payload: object) -> object:
    """Cancel a job once it runs, then stream it: stream() must still end on its own."""
    job = runpod.Endpoint(endpoint).run(payload)
    deadline = time.monotonic() + 30
    while job.status() == "IN_QUEUE" and time.monotonic() < deadline:
        time.sleep(0.1)
    cancelled = job.cancel()
    return {"cancel": cancelled, "chunks": list(job.stream()), "status": job.status()}


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


def one(scenario: str, name: str, given: object) -> object:
    if scenario == "asyncio":
        return asyncio.run(asyncio_client(name, given))
    return SCENARIOS[scenario](name, given)


def many(calls: list[list]) -> list[dict]:
    def guarded(call: list) -> dict:
        try:
            return {"result": one(*call)}
        except Exception as exc:  # noqa: BLE001 - reported to the test, which names the call
            return {"exception": f"{type(exc).__name__}: {exc}"}

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(guarded, calls))


SCENARIOS = {"run_sync": run_sync, "run": run_and_poll, "stream": stream, "cancel": cancel, "health": health,
             "purge": purge, "cancel_then_stream": cancel_then_stream}

if __name__ == "__main__":
    if sys.argv[1] == "many":
        print(json.dumps(many(json.loads(sys.argv[2]))))
    else:
        scenario, name = sys.argv[1], sys.argv[2]
        given = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
        print(json.dumps(one(scenario, name, given)))

"""A closed-loop gRPC load generator: C concurrent unary calls for D seconds, raw bytes.

    python bench/grpc_load.py ADDRESS METHOD CONCURRENCY SECONDS  ->  prints one JSON line
"""

import asyncio
import json
import sys
import time

import grpc

REQUEST = b"\x08\x01"  # noop.Sample(n=1), pre-serialized so the client spends nothing on protobuf


async def worker(call, stop_at: float, latencies: list[float], errors: list[int]) -> None:
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            await call(REQUEST)
        except grpc.RpcError:
            errors.append(1)
            continue
        latencies.append(time.perf_counter() - started)


async def main(address: str, method: str, concurrency: int, seconds: float) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(method)
        latencies: list[float] = []
        errors: list[int] = []
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(worker(call, stop_at, latencies, errors) for _ in range(concurrency)))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    print(json.dumps({"rps": len(latencies) / seconds, "p50": pick(0.5), "p99": pick(0.99), "errors": len(errors)}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))

"""A Task taking metrics_client in its constructor, and an async __call__."""

import asyncio
import json


class Task:
    def __init__(self, metrics_client):
        self.metrics = metrics_client

    async def __call__(self, config):
        await asyncio.sleep(0)
        self.metrics.increment("task_runs")
        with open(config["output"], "w") as out:
            json.dump({"async": True}, out)

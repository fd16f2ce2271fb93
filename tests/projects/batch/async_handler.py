"""An async handle_batch: runs on the worker's loop, stops at an await when cancelled."""

import asyncio
import json


class Handler:
    def __init__(self, config):
        self.output = config["output"]

    async def handle_batch(self, payload, batch_id):
        for item in payload:
            if isinstance(item, dict) and "sleep" in item:
                await asyncio.sleep(item["sleep"])
            with open(self.output, "a") as out:
                out.write(json.dumps({"batch_id": batch_id, "item": item}) + "\n")

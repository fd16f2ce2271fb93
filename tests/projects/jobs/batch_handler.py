"""A BatchAPI handler for the end-to-end tests. Each batch's items are appended, one JSON line
each, to config["output"] once the whole batch succeeded, then an {"end": batch_id} line; items
can ask to sleep, fail, fail once (a marker file), exit, or be killed like the OOM killer does."""

import json
import os
import signal
import time
from pathlib import Path


class Handler:
    def __init__(self, config, job_spec):
        self.config = config
        self.job_spec = job_spec

    def handle_batch(self, payload, batch_id):
        for item in payload:
            if not isinstance(item, dict):
                continue
            if "sleep" in item:
                time.sleep(item["sleep"])
            if item.get("fail"):
                raise ValueError(f"item {item['n']} always fails")
            if "fail_once" in item and not Path(item["fail_once"]).exists():
                Path(item["fail_once"]).touch()
                raise RuntimeError(f"item {item['n']} fails on its first attempt")
            if item.get("oom"):
                os.kill(os.getpid(), signal.SIGKILL)
        with open(self.config["output"], "a") as out:
            for item in payload:
                out.write(json.dumps({"batch_id": batch_id, "item": item}) + "\n")
            out.write(json.dumps({"end": batch_id, "job_spec": self.job_spec["job_id"],
                                  "from_api": self.config.get("from_api"),
                                  "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")

    def on_job_complete(self):
        if self.config.get("complete_fails"):
            raise RuntimeError("on_job_complete refused")
        with open(self.config["complete_marker"], "a") as out:
            out.write(self.job_spec["job_id"] + "\n")

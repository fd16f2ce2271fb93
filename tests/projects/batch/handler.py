"""A BatchAPI handler for the worker-side tests: each item is appended, as one JSON line, to the
file named in config["output"]; a batch whose id is in config["fail_batches"] raises."""

import json
import sys
import time


class Handler:
    def __init__(self, config, job_spec):
        self.config = config
        self.job_spec = job_spec
        if "seen" in config:  # what the constructor was given, for the test to read
            with open(config["seen"], "w") as out:
                json.dump({"config": config, "job_spec": job_spec}, out)

    def handle_batch(self, payload, batch_id):
        if batch_id in self.config.get("fail_batches", []):
            raise ValueError(f"batch {batch_id} refused")
        print(f"handling {batch_id}")
        with open(self.config["output"], "a") as out:
            out.write(json.dumps({"event": "start", "batch_id": batch_id, "at": time.monotonic()}) + "\n")
            out.flush()
            for item in payload:
                if isinstance(item, dict) and "sleep" in item:
                    time.sleep(item["sleep"])
                if isinstance(item, dict) and "exit" in item:
                    sys.exit(item["exit"])
                out.write(json.dumps({"batch_id": batch_id, "item": item}) + "\n")
            out.write(json.dumps({"event": "end", "batch_id": batch_id, "at": time.monotonic()}) + "\n")

    def on_job_complete(self):
        if self.config.get("complete_fails"):
            raise RuntimeError("cannot finish " + self.job_spec["job_id"])
        with open(self.config["complete_marker"], "a") as out:
            out.write(self.job_spec["job_id"] + "\n")

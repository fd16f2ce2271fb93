"""The smallest BatchAPI handler: config only, handle_batch(payload), no on_job_complete."""

import json


class Handler:
    def __init__(self, config):
        self.output = config["output"]

    def handle_batch(self, payload):
        with open(self.output, "a") as out:
            out.write(json.dumps(payload) + "\n")

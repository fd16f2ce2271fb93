"""A TaskAPI definition for the end-to-end tests: config["action"] says what the run does."""

import json
import os
import time


class Task:
    def __call__(self, config):
        action = config.get("action", "write")
        if action == "raise":
            raise ValueError("the task failed on purpose")
        if action == "sleep":
            time.sleep(config["seconds"])
        with open(config["output"], "w") as out:
            json.dump({"config": config, "spec": os.environ.get("CORTEX_TASK_SPEC")}, out)

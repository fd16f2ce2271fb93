"""A TaskAPI definition for the worker-side tests: config["action"] says what the run does."""

import json
import sys
import time


class Task:
    def __call__(self, config):
        action = config.get("action", "write")
        if action == "raise":
            raise ValueError("the task failed on purpose")
        if action == "exit":
            sys.exit(config["code"])
        if action == "interrupt":
            raise KeyboardInterrupt
        if action == "sleep":
            time.sleep(config["seconds"])
        print("task ran")
        with open(config["output"], "w") as out:
            json.dump(config, out)

"""A generator RunPod worker whose streamed items are also returned as the job's output."""

import runpod


def handler(job):
    for word in job["input"]["text"].split():
        yield word.upper()


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})

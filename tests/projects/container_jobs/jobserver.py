"""The user's web server for the container job tests (stdlib only): ``python jobserver.py <port>``.

Every request other than /healthz is recorded as one JSON line in ``calls.jsonl`` (in the
working directory, the project): path, the headers inferd adds, body, a few variables and the
job spec file's content, and how many POSTs were inside at that moment. POST / answers by its
body: ``{"mode": "text"|"badjson"|"status"|"empty"}`` gives a reply that is no async result,
``"hangup"`` half a reply and a closed connection, ``"slow"`` (or a batch holding it) takes
0.4 s, ``"exit_once"`` ends the server without an answer the first time its request id is seen;
a JSON array holding ``"fail"`` (a batch) gets 500, one holding ``"die_once"`` ends the server
the first time in a job; anything else 200 with a JSON echo. ``/on-job-complete`` answers
200, unless a batch of the job held ``"die_at_end"``: then it ends the server without an answer.
GET /unready answers 503, any other GET 200; ``START_DELAY`` seconds pass before it listens.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEADERS = ("content-type", "x-cortex-request-id", "x-cortex-job-id")
LOCK = threading.Lock()
inside = 0
VARIABLES = ("CORTEX_PORT", "CORTEX_VERSION", "CORTEX_API_BASE_URL", "CORTEX_JOB_SPEC", "CORTEX_SCRATCH_DIR")


def record(entry):
    fd = os.open("calls.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def spec_text():
    path = os.environ.get("CORTEX_JOB_SPEC")
    if not path:
        return None
    with open(path) as f:
        return f.read()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass

    def _answer(self, status, body, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/unready":
            return self._answer(503, b'{"ready": false}')
        self._answer(200, b'{"ready": true}')

    def do_POST(self):
        global inside
        with LOCK:
            inside += 1
            now_inside = inside
        try:
            self._post(now_inside)
        finally:
            with LOCK:
                inside -= 1

    def _post(self, now_inside):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        text = body.decode("utf-8", "replace")
        record({"path": self.path, "headers": {h: self.headers.get(h) for h in HEADERS}, "body": text,
                "env": {v: os.environ.get(v) for v in VARIABLES}, "spec": spec_text(), "inside": now_inside,
                "pid": os.getpid()})
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        mode = document.get("mode") if isinstance(document, dict) else None
        if mode == "text":
            return self._answer(200, b"plain words", "text/plain")
        if mode == "badjson":
            return self._answer(200, b"{not json")
        if mode == "status":
            return self._answer(500, b'{"error": "no"}')
        if mode == "empty":
            return self._answer(200, b"")
        if mode == "hangup":  # half an answer, then the connection closes (the server lives on)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"half": ')
            self.wfile.flush()
            self.close_connection = True
            return None
        if mode == "slow" or (isinstance(document, list) and "slow" in document):
            time.sleep(0.4)
        marker = f"exited-{self.headers.get('x-cortex-request-id')}"
        if mode == "exit_once" and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        if isinstance(document, list) and "die_once" in document:
            marker = f"died-{self.headers.get('x-cortex-job-id')}"
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(3)
        if isinstance(document, list) and "die_at_end" in document:
            open(f"dies-at-end-{self.headers.get('x-cortex-job-id')}", "w").close()
        if self.path == "/on-job-complete" and os.path.exists(f"dies-at-end-{self.headers.get('x-cortex-job-id')}"):
            os._exit(3)
        if isinstance(document, list) and "fail" in document:
            return self._answer(500, b'{"error": "a failing batch"}')
        echo = {"body": text, "content_type": self.headers.get("content-type"),
                "request_id": self.headers.get("x-cortex-request-id")}
        self._answer(200, json.dumps(echo).encode(), "application/json; charset=utf-8")


if __name__ == "__main__":
    time.sleep(float(os.environ.get("START_DELAY", "0")))  # a server that takes a while to listen
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

"""The user's own web server for the container API tests (stdlib only).

``python server.py <port>``; READY_DELAY (seconds): /healthz answers 503 until then, and the
file ``$CORTEX_SCRATCH_DIR/ready`` appears then (for an exec probe). Every answer says how many
requests other than probes arrived before that moment (``early``).
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STARTED = time.monotonic()
READY_AT = STARTED + float(os.environ.get("READY_DELAY", "0"))
SCRATCH = os.environ.get("CORTEX_SCRATCH_DIR", ".")
PROBES = ("/healthz", "/live")
early = 0


def mark_ready() -> None:
    time.sleep(max(0.0, READY_AT - time.monotonic()))
    with open(os.path.join(SCRATCH, "ready"), "w") as f:
        f.write("yes")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass

    def _answer(self, status, data, headers=()):
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _any(self):
        global early
        url = urlsplit(self.path)
        if url.path not in PROBES and time.monotonic() < READY_AT:
            early += 1
        body = self._read_body()
        if url.path == "/healthz":
            ready = time.monotonic() >= READY_AT
            return self._answer(200 if ready else 503, {"ready": ready})
        if url.path == "/live":
            dead = os.path.exists(os.path.join(SCRATCH, "dead"))
            return self._answer(500 if dead else 200, {"live": not dead})
        if url.path == "/sick":
            open(os.path.join(SCRATCH, "dead"), "w").close()
            return self._answer(200, {"sick": True})
        if url.path == "/slow":
            time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
        if url.path == "/exit":
            self._answer(200, {"exiting": True})
            self.wfile.flush()
            os._exit(3)
        if url.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(parse_qs(url.query).get("n", ["5"])[0])):
                piece = f"chunk {i} {time.monotonic():.3f}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
            return None
        if url.path == "/split":  # head and body in separate writes, the body in two; ?cut=1: only half of it
            piece = json.dumps({"split": True, "filler": "x" * 200}).encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(piece))
            for part in (piece[:100], piece[100:]):
                self.wfile.flush()
                time.sleep(0.05)
                self.wfile.write(part)
                if parse_qs(url.query).get("cut"):
                    self.close_connection = True
                    return None
            return None
        if url.path == "/chunked":  # a whole answer framed in chunks, in one write
            piece = json.dumps({"chunked": True}).encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"%x\r\n%s\r\n0\r\n\r\n" % (len(piece), piece))
            return None
        if url.path == "/echo":
            self.send_response(200)
            self.send_header("Content-Type", self.headers.get("Content-Type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        headers = {k.lower(): v for k, v in self.headers.items()}
        return self._answer(200, {
            "method": self.command, "path": url.path, "query": url.query, "body": body.decode("latin-1"),
            "headers": headers, "port": self.server.server_address[1], "pid": os.getpid(), "early": early,
            "env": {k: v for k, v in os.environ.items() if k.startswith("CORTEX_") or k.startswith("APP_")},
            "argv": sys.argv[1:], "cwd": os.getcwd(),
        }, [("X-From-Container", "yes"), ("Connection", "keep-alive")])

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    threading.Thread(target=mark_ready, daemon=True).start()
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

"""The worker protocol: every message between the daemon and a worker, typed, with its encoding.

Nothing else builds or reads frames. A frame is a small JSON meta object (``"t"`` names the
message) plus an opaque body (``inferd.worker.ipc`` carries them). Each message here is a slotted
dataclass (not frozen: its constructor is on the hot path, and frozen ones cost 3x) with
``encode() -> (meta, body)``; ``decode(meta, body)`` turns a received frame back
into one. A message that is not in ``MESSAGES``, or lacks a field, raises ``ProtocolError``:
the channel treats that like a corrupt frame, and the daemon refuses such input before it is
ever sent (nothing a client sends can make a frame the other side cannot read).

Calls that stream (gRPC, and later RunPod streams and the container proxy) use ``Open`` then
``Chunk``/``InputEnd`` frames towards the worker and ``Chunk`` frames back, each direction
bounded by ``Credit`` (a window of ``WINDOW`` chunks); ``End`` closes the call with a status.

Liveness is not in this channel: heartbeats use a second socket pair answered by a thread in
the worker (see ``inferd.worker.heartbeat``), so a handler blocking the worker's event loop
cannot hide a dead process, nor a live one look dead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

WINDOW = 8  # chunks a sender may be ahead of the receiver's consumption

# status codes of a streamed call's End, shared with gRPC's numbering (grpc.StatusCode values)
OK, CANCELLED, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED = 0, 1, 13, 14, 4
INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED = 3, 5, 12

Meta = dict[str, Any]
Headers = list[list[str]]
Body = bytes | list[bytes]  # pieces are sent as they are and arrive as one bytes object


class ProtocolError(ValueError):
    """A frame that is not a message of this protocol."""


@dataclass(slots=True)
class Init:
    """Daemon -> worker, first frame: everything needed to import and construct the Handler."""

    TAG: ClassVar[str] = "init"
    api: str
    runner: str                  # import string of the worker-side runner ("module:Class")
    project_dir: str
    handler_path: str
    python_path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    log_level: str = "info"
    max_body_size: int = 20 << 20
    options: dict[str, Any] = field(default_factory=dict)  # runner-specific (batching, grpc)

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "api": self.api, "runner": self.runner, "project_dir": self.project_dir,
                "handler_path": self.handler_path, "python_path": self.python_path, "config": self.config,
                "threads": self.threads, "log_level": self.log_level, "max_body_size": self.max_body_size,
                "options": self.options}, b""

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Init:
        return cls(meta["api"], meta["runner"], meta["project_dir"], meta["handler_path"], meta.get("python_path"),
                   meta.get("config") or {}, int(meta.get("threads", 1)), meta.get("log_level", "info"),
                   int(meta.get("max_body_size", 20 << 20)), meta.get("options") or {})


@dataclass(slots=True)
class Ready:
    """Worker -> daemon: the Handler is constructed; ``info`` is what the runner reports
    (for HTTP: each verb and the arguments its method takes)."""

    TAG: ClassVar[str] = "ready"
    pid: int
    info: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "pid": self.pid, "info": self.info}, b""

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Ready:
        return cls(int(meta["pid"]), meta.get("info") or {})


@dataclass(slots=True)
class InitFailed:
    TAG: ClassVar[str] = "init_failed"
    error: str
    traceback: str = ""

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "error": self.error, "traceback": self.traceback}, b""

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> InitFailed:
        return cls(str(meta["error"]), str(meta.get("traceback", "")))


@dataclass(slots=True)
class Call:
    """Daemon -> worker: one request/response call (an HTTP request, an async job)."""

    TAG: ClassVar[str] = "call"
    id: int
    rid: str
    verb: str
    content_type: str = ""
    query: str = ""
    headers: Headers | None = None  # only when the handler takes ``headers``
    body: Body = b""

    def encode(self) -> tuple[Meta, Body]:
        meta: Meta = {"t": self.TAG, "id": self.id, "rid": self.rid, "verb": self.verb,
                      "ct": self.content_type, "q": self.query}
        if self.headers is not None:
            meta["h"] = self.headers
        return meta, self.body

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Call:
        return cls(meta["id"], meta["rid"], meta["verb"], meta.get("ct", ""), meta.get("q", ""), meta.get("h"), body)

    @property
    def data(self) -> bytes:
        """The body in one piece (as received, a call's body is always one)."""
        return self.body if isinstance(self.body, bytes) else b"".join(self.body)


@dataclass(slots=True)
class Reply:
    """Worker -> daemon: the one answer to a ``Call``; ``callback`` says a callback waits for
    ``Sent`` (it runs only after the response has left)."""

    TAG: ClassVar[str] = "reply"
    id: int
    status: int
    headers: Headers
    callback: bool = False
    body: bytes = b""

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "id": self.id, "status": self.status, "h": self.headers, "cb": self.callback}, self.body

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Reply:
        return cls(meta["id"], int(meta["status"]), meta["h"], bool(meta.get("cb")), body)


@dataclass(slots=True)
class Sent:
    """Daemon -> worker: the reply of call ``id`` has been sent; run its callback now."""

    TAG: ClassVar[str] = "sent"
    id: int
    rid: str | None = None

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "id": self.id, "rid": self.rid}, b""

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Sent:
        return cls(meta["id"], meta.get("rid"))


@dataclass(slots=True)
class Open:
    """Daemon -> worker: start a streamed call of ``method`` (a gRPC RPC); ``body`` is the
    first input when the call has exactly one."""

    TAG: ClassVar[str] = "open"
    id: int
    rid: str
    method: str
    metadata: list[list[str]] = field(default_factory=list)
    deadline: float | None = None  # seconds left, as the client set it
    peer: str = ""
    body: bytes = b""

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "id": self.id, "rid": self.rid, "m": self.method, "md": self.metadata,
                "deadline": self.deadline, "peer": self.peer}, self.body

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Open:
        return cls(meta["id"], meta["rid"], meta["m"], [list(p) for p in meta.get("md") or ()],
                   meta.get("deadline"), meta.get("peer", ""), body)


@dataclass(slots=True)
class Chunk:
    """One streamed message of call ``id``, in either direction."""

    TAG: ClassVar[str] = "chunk"
    id: int
    body: bytes = b""

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "id": self.id}, self.body

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Chunk:
        return cls(meta["id"], body)


@dataclass(slots=True)
class InputEnd:
    """Daemon -> worker: the client will send no more chunks for call ``id``."""

    TAG: ClassVar[str] = "input_end"
    id: int

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "id": self.id}, b""

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> InputEnd:
        return cls(meta["id"])


@dataclass(slots=True)
class Credit:
    """Either direction: the receiver consumed ``n`` chunks of call ``id``; send that many more."""

    TAG: ClassVar[str] = "credit"
    id: int
    n: int = 1

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "id": self.id, "n": self.n}, b""

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Credit:
        return cls(meta["id"], int(meta.get("n", 1)))


@dataclass(slots=True)
class Cancel:
    """Daemon -> worker: the client went away or its deadline passed; stop producing."""

    TAG: ClassVar[str] = "cancel"
    id: int

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "id": self.id}, b""

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Cancel:
        return cls(meta["id"])


@dataclass(slots=True)
class End:
    """Worker -> daemon: the last frame of a streamed call, with its status; a unary result
    rides in its body (one frame, one wake-up) when ``has_reply``."""

    TAG: ClassVar[str] = "end"
    id: int
    code: int = OK
    details: str = ""
    has_reply: bool = False
    body: bytes = b""

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "id": self.id, "code": self.code, "details": self.details,
                "reply": self.has_reply}, self.body

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> End:
        return cls(meta["id"], int(meta.get("code", OK)), str(meta.get("details", "")), bool(meta.get("reply")), body)


@dataclass(slots=True)
class Metric:
    """Worker -> daemon: one ``metrics_client`` observation."""

    TAG: ClassVar[str] = "metric"
    name: str
    kind: str                    # gauge, increment or histogram
    value: float
    tags: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "name": self.name, "kind": self.kind, "value": self.value, "tags": self.tags}, b""

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Metric:
        return cls(str(meta["name"]), str(meta["kind"]), float(meta["value"]), meta.get("tags") or {})

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "value": self.value, "tags": self.tags}


@dataclass(slots=True)
class Models:
    """Worker -> daemon: a multi_model_reloading API's models as this worker holds them now
    (per model: versions, loaded, latest, failed), sent whenever that changes."""

    TAG: ClassVar[str] = "models"
    models: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG, "models": self.models}, b""

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Models:
        models = meta.get("models")
        if not isinstance(models, dict):
            raise ValueError("models must be a mapping")
        return cls(models)


@dataclass(slots=True)
class Stop:
    """Daemon -> worker: finish what is in flight, run pending callbacks, then exit."""

    TAG: ClassVar[str] = "stop"

    def encode(self) -> tuple[Meta, bytes]:
        return {"t": self.TAG}, b""

    @classmethod
    def decode(cls, meta: Meta, body: bytes) -> Stop:
        return cls()


Message = (Init | Ready | InitFailed | Call | Reply | Sent | Open | Chunk | InputEnd | Credit | Cancel | End
           | Metric | Models | Stop)
MESSAGES: dict[str, Any] = {cls.TAG: cls for cls in (Init, Ready, InitFailed, Call, Reply, Sent, Open, Chunk,
                                                      InputEnd, Credit, Cancel, End, Metric, Models, Stop)}


def decode(meta: Meta, body: bytes) -> Message:
    """The message a received frame carries; ``ProtocolError`` when it is none of ours."""
    try:
        cls = MESSAGES[meta["t"]]
        message: Message = cls.decode(meta, body)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"not a worker protocol message: {type(exc).__name__}: {exc}") from None
    return message

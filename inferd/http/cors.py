"""CORS for an API's routes, and the refusal of requests that pages of other sites make.

Without ``networking.allow_origins`` no reply carries a CORS header, so a web page can neither
read an API's replies nor pass a preflight. With it, a listed origin is echoed back (``"*"``
answers ``*``). ``Access-Control-Allow-Credentials`` is never sent: inferd has no cookies or
sessions to share, and credentials are what would let one site act as the browser's user on another.

CORS only hides replies: a page of any site can still make the browser send a "simple" request
(a form POST, a ``no-cors`` fetch of text/plain) to a local inferd, and the handler would run.
So, as Jupyter does, a request whose ``Origin`` is neither allowed by the API nor the daemon's
own (``http://`` + the Host header: a page the daemon serves itself) gets 403 and never reaches
the API. OPTIONS is the exception: the fronts answer it themselves, never calling a handler, so a
foreign preflight is answered as before, with ``Allow`` and no CORS headers, and fails in the
browser all the same. ``Origin: null`` (sandboxed frames, local files, some redirects) is foreign
unless the API allows ``"*"``. Requests without Origin (curl, SDKs, servers) are not a browser's
cross-site calls and pass untouched.

The fronts know nothing of CORS: they answer OPTIONS with ``Allow``, and the preflight's
``Access-Control-Allow-Methods`` is read from it, so it always lists the API's own verbs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.http.protocol import DirectHandler
from inferd.http.responses import RawHeaders, send_error
from inferd.http.routing import DirectFinder
from inferd.spec.sections import ANY_ORIGIN

ALLOW_ORIGIN = b"access-control-allow-origin"
VARY_ORIGIN = (b"vary", b"origin")
NULL_ORIGIN = b"null"


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[bytes]  # as browsers send them in Origin
    any_origin: bool

    @property
    def answers_origins(self) -> bool:
        """Whether replies get CORS headers at all (the API sets allow_origins)."""
        return self.any_origin or bool(self.origins)


@dataclass(frozen=True)
class CorsRequest:
    """What CORS reads of a request."""

    origin: bytes | None
    host: bytes | None
    options: bool  # answered by the front itself: no handler runs
    preflight: bool  # an OPTIONS a browser sends before the real request
    request_headers: bytes | None  # Access-Control-Request-Headers of a preflight


def cors_policy(origins: Sequence[str]) -> CorsPolicy:
    return CorsPolicy(frozenset(o.encode() for o in origins if o != ANY_ORIGIN), ANY_ORIGIN in origins)


def cors_request(method: str, headers: Sequence[tuple[bytes, bytes]]) -> CorsRequest:
    origin = host = request_method = request_headers = None
    for name, value in headers:
        if name == b"origin":
            origin = value
        elif name == b"host":
            host = value
        elif name == b"access-control-request-method":
            request_method = value
        elif name == b"access-control-request-headers":
            request_headers = value
    preflight = method == "OPTIONS" and origin is not None and request_method is not None
    return CorsRequest(origin, host, method == "OPTIONS", preflight, request_headers if preflight else None)


def has_origin(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    for name, _ in headers:
        if name == b"origin":
            return True
    return False


def allowed_origin(policy: CorsPolicy, origin: bytes | None) -> bytes | None:
    """The Access-Control-Allow-Origin value for a page of ``origin``, or None when it gets none."""
    if origin is None:
        return None
    if policy.any_origin:
        return b"*"
    return origin if origin in policy.origins else None


def is_same_origin(origin: bytes, host: bytes | None) -> bool:
    """Whether a page of ``origin`` was served by this daemon, reached under the name in ``host``.

    The daemon speaks plain HTTP, so its own pages have origin ``http://<Host>``; browsers leave
    a default port out of both headers alike, so they compare as given, case aside.
    """
    return host is not None and origin.lower() == b"http://" + host.lower()


def origin_refusal(policy: CorsPolicy, request: CorsRequest, api: str) -> str | None:
    """Why ``api`` refuses ``request``, or None when it is served."""
    origin = request.origin
    if origin is None or request.options:
        return None
    if allowed_origin(policy, origin) is not None or is_same_origin(origin, request.host):
        return None
    shown = origin.decode("latin-1")
    why = f"origin {shown} is not allowed to call api {api}: pages of other sites may not make a browser call it"
    setting = f"networking.allow_origins of api {api} in cortex.yaml"
    if origin == NULL_ORIGIN:  # sent by pages that have no origin to list: only "*" lets them in
        return f'{why}; to let sandboxed pages and local files call it, set {setting} to ["*"]'
    return f'{why}; to let pages of {shown} call it, add "{shown}" to {setting}'


def cors_headers(policy: CorsPolicy, request: CorsRequest, reply: RawHeaders) -> RawHeaders:
    """The headers to add to ``reply`` (the headers the front sends, or the refusal's) for ``request``."""
    # The reply depends on Origin whenever origins are listed, even when this one gets nothing:
    # a cache must not hand one origin's answer (or a request's without Origin) to another.
    added = [VARY_ORIGIN] if policy.origins else []
    allow_origin = allowed_origin(policy, request.origin)
    if allow_origin is None or any(name.lower() == ALLOW_ORIGIN for name, _ in reply):
        return added  # a handler that sets its own CORS headers keeps them, never doubled
    added.append((ALLOW_ORIGIN, allow_origin))
    if request.preflight:
        methods = next((value for name, value in reply if name.lower() == b"allow"), None)
        if methods is not None:
            added.append((b"access-control-allow-methods", methods))
        if request.request_headers is not None:
            added.append((b"access-control-allow-headers", request.request_headers))
    return added


class CorsApp:
    """``app`` of API ``api``: requests from pages it does not allow refused, CORS headers added to the rest."""

    def __init__(self, app: ASGIApp, policy: CorsPolicy, api: str) -> None:
        self.app = app
        self.policy = policy
        self.api = api
        self._direct: DirectFinder | None = getattr(app, "direct", None)

    def direct(self, scope: Scope) -> DirectHandler | None:
        """The app's direct handler where CORS has nothing to do: the same test as ``__call__``'s."""
        if self._direct is None or self.policy.origins or has_origin(scope["headers"]):
            return None
        return self._direct(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The hot path: no Origin (no browser page behind it) and no Vary to add goes straight in.
        if not self.policy.origins and not has_origin(scope["headers"]):
            await self.app(scope, receive, send)
            return
        request = cors_request(scope["method"], scope["headers"])
        refusal = origin_refusal(self.policy, request, self.api)
        if refusal is not None:
            await send_error(send, 403, self.api, refusal, cors_headers(self.policy, request, []))
            return
        if not self.policy.answers_origins:  # without allow_origins a served reply gets nothing added
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers += cors_headers(self.policy, request, headers)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def with_cors(app: ASGIApp, origins: Sequence[str], api: str) -> ASGIApp:
    """``app``, the route of API ``api``, answering the browser origins in ``origins`` (its allow_origins)."""
    return CorsApp(app, cors_policy(origins), api)

"""Who may use the app, and the headers every answer carries.

ASGI middleware, in front of everything else (so a refused request's body is never read):
- with a token (`serve --token` or EDGE_INFER_TOKEN) every request but the page, its static
  files, /healthz and the API docs needs `Authorization: Bearer <token>`, else 401;
- without one, a browser's cross-origin POST is refused (403): its Origin must name the Host it
  was sent to, and that Host must be an IP address, localhost, this machine's name or an
  allowed name (so a web page cannot reach the app through DNS rebinding either); clients that
  send no Origin (curl, scripts) are not browsers acting for another site and pass;
- X-Content-Type-Options, a Content-Security-Policy with frame-ancestors 'none', X-Frame-Options
  and Referrer-Policy on every response.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNAUTHORIZED, FORBIDDEN = 401, 403
MIN_TOKEN_CHARS = 16
TOKEN_ENV = "EDGE_INFER_TOKEN"
PUBLIC_PATHS = ("/", "/healthz", "/docs", "/openapi.json", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/", "/static-offline-docs/")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DEFAULT_PORTS = {"http": 80, "https": 443}
CSP = "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'; form-action 'self'"
# Swagger UI (/docs) starts itself with an inline script
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
            "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'")
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY",
                    "referrer-policy": "no-referrer"}


def check_token(token: str) -> str:
    """The token if it is long enough to guess at no rate, else ValueError (one line)."""
    if len(token) < MIN_TOKEN_CHARS or token != token.strip():
        raise ValueError(f"the access token must be at least {MIN_TOKEN_CHARS} characters "
                         "without surrounding spaces (e.g. `python -c 'import secrets; "
                         "print(secrets.token_urlsafe(24))'`)")
    return token


def machine_names() -> set[str]:
    """Names this machine answers to on a clinic network: its host name, with .local (mDNS)."""
    name = socket.gethostname().lower()
    return {"localhost", name, f"{name}.local"}  # no getfqdn(): a DNS lookup can hang


def _host_and_port(host_header: str, scheme: str) -> tuple[str, int | None]:
    parts = urlsplit(f"{scheme}://{host_header}")
    try:
        return (parts.hostname or ""), parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number
        return "", None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class AccessGuard:
    """The token or Origin/Host check, and the security headers; see the module docstring."""

    def __init__(self, app: ASGIApp, token: str | None = None,
                 allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.token = check_token(token).encode() if token else None
        self.allowed_hosts = machine_names() | {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["content-security-policy"] = DOCS_CSP if path == "/docs" else CSP
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, with_headers)
            return
        status, detail = refusal
        headers = {"www-authenticate": "Bearer"} if status == UNAUTHORIZED else {}
        await JSONResponse({"detail": detail}, status, headers)(scope, receive, with_headers)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, reason) for a request to refuse, None for one to serve."""
        headers = Headers(scope=scope)
        public = scope["method"] in ("GET", "HEAD") and (
            scope["path"] in PUBLIC_PATHS or scope["path"].startswith(PUBLIC_PREFIXES))
        if self.token is not None:
            if public:
                return None
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  self.token):
                return None
            return UNAUTHORIZED, ("this server needs its access token: send "
                                  "'Authorization: Bearer <token>' (the page asks for it)")
        if scope["method"] in SAFE_METHODS:
            return None
        return self._cross_origin(headers, scope.get("scheme", "http"))

    def _cross_origin(self, headers: Headers, scheme: str) -> tuple[int, str] | None:
        """Refuse a browser's request on behalf of another site, or through a foreign name."""
        origin = headers.get("origin")
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return FORBIDDEN, "cross-origin request refused"
        if origin is None:
            return None
        host, port = _host_and_port(headers.get("host", ""), scheme)
        parts = urlsplit(origin)
        try:
            origin_port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            origin_port = None
        if parts.hostname is None or (parts.hostname, origin_port) != (host, port):
            return FORBIDDEN, "cross-origin request refused"
        if not (_is_ip(host) or host in self.allowed_hosts):
            return FORBIDDEN, (f"host name {host!r} is not this machine's: start the server "
                               "with --allowed-host NAME (or --token)")
        return None

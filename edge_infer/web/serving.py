"""uvicorn for a clinic network: deadlines for request headers, a cap on open connections that
sheds idle ones first, no body read after the answer, and rate-limited one-line logs.

uvicorn itself closes idle keep-alive connections but waits forever for a request's headers,
and accepts connections until the process runs out of file descriptors (then asyncio logs
every failed accept()). Here a connection must deliver its headers within `header_timeout_s`
(else 408 and closed), the request body within the app's body timeout (BodySizeLimit, 408),
and at `max_connections` the oldest connection without a request in work (still sending its
headers or body, or idle) is closed to make room for the new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge_infer.web.defaults import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_MAX_CONNECTIONS,
)

LOG_LINES_PER_MINUTE = 60
MAX_LOG_LINE_CHARS = 300
TIMEOUT_BODY = b"request headers took too long\n"
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                    b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(TIMEOUT_BODY)
                    + TIMEOUT_BODY)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a header deadline and a connection cap (see module)."""

    header_timeout_s = DEFAULT_HEADER_TIMEOUT_S
    max_connections = DEFAULT_MAX_CONNECTIONS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.idle_since = time.monotonic()
        self.header_deadline: asyncio.TimerHandle | None = None
        self._expect_headers()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def _expect_headers(self) -> None:
        """(Re)arm the deadline for the next request's headers."""
        self._cancel_deadline()
        self.header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_late(self) -> None:
        self.header_deadline = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

    def sheddable(self) -> bool:
        """No request in work: headers or body still arriving, or idle between requests."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and (
            self.cycle is None or not self.cycle.response_started)

    def _make_room(self) -> None:
        """Close the longest-waiting sheddable connection, or this one if there is none."""
        others = [c for c in self.connections if c is not self
                  and isinstance(c, GuardedH11Protocol) and c.sheddable()
                  and not c.transport.is_closing()]
        victim = min(others, key=lambda c: c.idle_since, default=self)
        victim.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the headers are in
            self._cancel_deadline()

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:  # answered before its body was read (413,
            self.transport.close()                  # 401, 408 ...): read no more of it
            return
        super().on_response_complete()
        self.idle_since = time.monotonic()
        if not self.transport.is_closing():
            self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)


class LogRateLimit(logging.Filter):
    """At most `per_minute` records a minute pass; with `one_line`, each is cut to one line of
    at most MAX_LOG_LINE_CHARS (an exception to its type and message, no traceback); the first
    dropped record of a minute is replaced by a note that lines are being dropped. (The access
    log's records keep their arguments: its formatter needs them, and they are one line.)"""

    def __init__(self, per_minute: int = LOG_LINES_PER_MINUTE, one_line: bool = True) -> None:
        super().__init__()
        self.per_minute, self.one_line = per_minute, one_line
        self.window_start, self.count = time.monotonic(), 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self.window_start >= 60:
            self.window_start, self.count = now, 0
        self.count += 1
        if self.count > self.per_minute + 1:
            return False
        if self.count == self.per_minute + 1:
            note = (f"log rate limit ({self.per_minute} lines a minute) reached: dropping "
                    "lines until the minute is over")
            if not self.one_line:  # the access formatter's five fields
                record.args = ("-", "NOTE", note, "-", 0)
            else:
                record.msg, record.args = note, ()
        elif self.one_line:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            record.msg, record.args = " ".join(text.split())[:MAX_LOG_LINE_CHARS], ()
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def limit_logs(per_minute: int = LOG_LINES_PER_MINUTE) -> None:
    """Rate-limit uvicorn's log (one budget for errors, one for the access log) and send every
    other library's records (asyncio's failed accept()s, python-multipart's warnings on a
    malformed form, ...) through the same error handlers and budget, via the root logger."""
    errors, access = LogRateLimit(per_minute), LogRateLimit(per_minute, one_line=False)
    error_handlers = logging.getLogger("uvicorn").handlers
    root = logging.getLogger()
    for handler in error_handlers:
        handler.addFilter(errors)
        if handler not in root.handlers:
            root.addHandler(handler)
    for handler in logging.getLogger("uvicorn.access").handlers:
        handler.addFilter(access)


def server_config(app: Any, host: str, port: int,
                  max_connections: int = DEFAULT_MAX_CONNECTIONS,
                  header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                  keep_alive_s: int = DEFAULT_KEEP_ALIVE_S) -> uvicorn.Config:
    """uvicorn's configuration with GuardedH11Protocol; logging configured and rate-limited."""
    protocol = type("ServedProtocol", (GuardedH11Protocol,),
                    {"header_timeout_s": header_timeout_s, "max_connections": max_connections})
    # limit_concurrency also bounds requests still in work after their client left
    config = uvicorn.Config(app, host=host, port=port, http=protocol,
                            timeout_keep_alive=keep_alive_s,
                            limit_concurrency=max_connections + 1, server_header=False)
    limit_logs()
    return config


def serve_app(app: Any, host: str, port: int, **limits: Any) -> None:
    """Run `app` until Ctrl-C with the limits of `server_config`."""
    uvicorn.Server(server_config(app, host, port, **limits)).run()

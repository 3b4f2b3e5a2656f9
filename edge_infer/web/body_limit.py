"""ASGI middleware that answers 413 to a request body over a size limit without reading it all,
and 408 to one that does not arrive in time.

A declared Content-Length over the limit is refused before any byte is read; a body without
one (chunked) is counted as it streams in and refused as soon as the count passes the limit.
The whole body must arrive within `timeout_s` of the request's start (a slow upload holds a
connection and its bytes in memory), and all requests together may hold at most
`budget_bytes` of body at once (503 with Retry-After beyond: uploads are kept in memory).
"""

from __future__ import annotations

import asyncio
import time

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_infer.web.defaults import DEFAULT_BODY_TIMEOUT_S
from edge_infer.web.limits import RETRY_AFTER_S

TOO_LARGE, TIMEOUT, BUSY = 413, 408, 503


class BodySizeLimit:
    """Refuse request bodies larger than `max_bytes` with 413 and `{"detail": message}`,
    bodies not received within `timeout_s` with 408, and bodies that would take the bytes
    held by all requests over `budget_bytes` with 503 (None: no budget)."""

    def __init__(self, app: ASGIApp, max_bytes: int, message: str,
                 timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
                 budget_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = message
        self.timeout_s = timeout_s
        self.budget_bytes = budget_bytes
        self.held = 0  # body bytes received by requests still in work (one event loop)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.message}, TOO_LARGE)(scope, receive, send)
            return
        received, complete = 0, False
        deadline = time.monotonic() + self.timeout_s

        async def counting_receive() -> Message:
            # An HTTPException here reaches FastAPI's handler as a 413 / 408, not a body-parse
            # error. Once the body is in, receive() only waits for a disconnect: no deadline.
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise HTTPException(TIMEOUT, f"upload too slow: the whole request must arrive "
                                    f"within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                size = len(message.get("body", b""))
                received += size
                self.held += size
                if received > self.max_bytes:
                    raise HTTPException(TOO_LARGE, self.message)
                if self.budget_bytes is not None and self.held > self.budget_bytes:
                    raise HTTPException(BUSY, "the server is busy receiving other uploads: "
                                        "try again in a few seconds",
                                        {"Retry-After": str(RETRY_AFTER_S)})
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            self.held -= received

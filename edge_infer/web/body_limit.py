"""ASGI middleware that answers 413 to a request body over a size limit without reading it all.

A declared Content-Length over the limit is refused before any byte is read; a body without
one (chunked) is counted as it streams in and refused as soon as the count passes the limit.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOO_LARGE = 413


class BodySizeLimit:
    """Refuse request bodies larger than `max_bytes` with 413 and `{"detail": message}`."""

    def __init__(self, app: ASGIApp, max_bytes: int, message: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.message}, TOO_LARGE)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            # An HTTPException here reaches FastAPI's handler as a 413, not a body-parse error.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(TOO_LARGE, self.message)
            return message

        await self.app(scope, counting_receive, send)

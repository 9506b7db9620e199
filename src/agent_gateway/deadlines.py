"""Deadlines for clients, so a slow one cannot hold what others need.

uvicorn waits without limit for a request's headers, and takes any amount of them.
`ClientDeadlinesProtocol` is its HTTP protocol with two checks added: a request's headers must
be complete within HEADER_TIMEOUT seconds of its first byte (else 408) and within
MAX_HEADER_BYTES (else 431), both answered in SPEC §8's shape before the connection closes.
A new connection that sends nothing at all is closed after HEADER_TIMEOUT; an idle kept-alive
one is uvicorn's (its keep-alive timeout closes it quietly). Bodies are the app's to read:
`BodyDeadline` (asgi.py) bounds them.
"""

from __future__ import annotations

import asyncio
import os
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from agent_gateway.errors import GatewayError, HeadersTooLarge, RequestTimeout, render_error
from agent_gateway.settings import Settings

_LINGER_SECONDS = 2.0


class ClientDeadlinesProtocol(HttpToolsProtocol):
    # Class-wide, as uvicorn builds one protocol per connection from the class it was given.
    header_timeout: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 64 * 1024

    @classmethod
    def configure(cls, settings: Settings) -> type[ClientDeadlinesProtocol]:
        cls.header_timeout = settings.header_timeout
        cls.max_header_bytes = settings.max_header_bytes
        return cls

    def connection_made(self, transport: Any) -> None:
        self._lingering = _Lingering(transport, self)
        super().connection_made(self._lingering)  # type: ignore[arg-type]  # a transport, proxied
        self._header_bytes = 0  # the current request's line and headers, as parsed
        self._raw_header_bytes = 0  # bytes read since its headers began, parsed or not
        self._in_headers = True
        self._started = False  # any byte of a request yet
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self._refused or self._lingering.lingering:
            return  # what a refused client still sends is read and dropped, until we close
        if self._in_headers:
            self._raw_header_bytes += len(data)
        super().data_received(data)
        # Headers still incomplete after parsing this read: the parser holds them all, so cap them.
        if self._in_headers and self._raw_header_bytes > self.max_header_bytes and not self._refused:
            self._refuse(HeadersTooLarge())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._started = True
        self._header_bytes = 0
        if self._deadline is None:  # the next request on a kept-alive connection gets its own
            self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_clock()
        self._in_headers = False
        self._raw_header_bytes = 0
        if self._header_bytes > self.max_header_bytes:  # all of them came in one read
            self._refuse(HeadersTooLarge())
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._in_headers = True  # what comes next on this connection is another request's headers
        self._raw_header_bytes = 0
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            # An answer is being written: a pipelined request's headers wait for it, so look again later.
            self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)
            return
        if self._started:
            self._refuse(RequestTimeout("The request's headers did not arrive in time."))
        else:
            self.transport.close()  # connected and said nothing: nothing to answer

    def _stop_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, error: GatewayError) -> None:
        self._stop_clock()
        request_id = os.urandom(16).hex()
        status, headers, body = render_error(error, request_id)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
        head += [name + b": " + value + b"\r\n" for name, value in [*headers, (b"x-request-id", request_id.encode())]]
        self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", body]))
        # Closing with the client's bytes unread would reset the connection and could destroy the
        # answer on its way: end our side, drop what still comes for a moment, then close.
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)


class _Lingering:
    """The connection's transport, whose `close` lingers while the client is still sending the
    request's body (an answer before the body's end: a slow or oversized body, 401, 413): uvicorn
    closes at once, and the unread bytes made the kernel reset the connection, which could destroy
    the answer before the client read it. Our side ends now; the rest is dropped, then closed."""

    def __init__(self, transport: Any, protocol: HttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.lingering = False

    def close(self) -> None:
        cycle = self._protocol.cycle
        if self.lingering or cycle is None or not cycle.more_body or self._transport.is_closing():
            self._transport.close()
            return
        self.lingering = True
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._protocol.loop.call_later(_LINGER_SECONDS, self._transport.close)

    def is_closing(self) -> bool:
        return self.lingering or bool(self._transport.is_closing())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

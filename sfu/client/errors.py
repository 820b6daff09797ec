"""The client's exception type."""

from __future__ import annotations

CONNECTION_CLOSED = "connection_closed"
"""Client-side code: the WebSocket closed before the request was answered."""
PROTOCOL_VIOLATION = "protocol_violation"
"""Client-side code: the server answered with something the client cannot use."""
HTTP_ERROR = "http_error"
"""Client-side code: an HTTP request (such as :func:`dev_token`) failed."""
CODEC_UNAVAILABLE = "codec_unavailable"
"""Client-side code: the codec asked for is not one this client can send."""
REQUEST_TIMEOUT = "request_timeout"
"""Client-side code: the server did not answer a request in time."""


class SfuError(Exception):
    """A request failed.

    ``code`` is one of :class:`sfu.protocol.ErrorCode` when the server sent an
    ``error`` message, or one of the client-side codes in this module.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

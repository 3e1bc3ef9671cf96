"""What the HTTP stand-ins (hub_standin, batch_standin) share: reading a request body, chunked or not."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request's body: ``Transfer-Encoding: chunked`` (httpx streams uploads so) or ``Content-Length`` bytes."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while size := int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16):
            out += handler.rfile.read(size)
            handler.rfile.readline()
        while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, then the blank line
            pass
        return bytes(out)
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


class StandinHandler(BaseHTTPRequestHandler):
    """The request handler both stand-ins build on: HTTP/1.1 keep-alive, no console log (calls are recorded)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        return read_body(self)

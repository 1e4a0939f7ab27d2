"""The little HTTP/1.1 the race speaks: one GET for the body, from a byte on (sans-IO).

RFC 9110 section 14.2: `Range: bytes=N-` asks for the body from byte N to its end; the
server answers `206 Partial Content` with `Content-Range: bytes N-LAST/SIZE` (section
14.4), or `416 Range Not Satisfiable` for a start at or past the end. A client that gets
`200` to a Range request receives the whole body again: it must skip what it holds, and
those bytes were fetched twice. Every connection carries one request and is closed after
the response (`Connection: close`), as a client does that resumes on a new connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 8192  # bytes: a longer request or response head is refused
PATH = "/download"  # the one resource: the body of the run's download
END = b"\r\n\r\n"
RANGE = re.compile(r"^bytes=(\d+)-$")
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class HttpError(Exception):
    """A request or response the race's peer cannot have sent (one line: what is wrong)."""


@dataclass(frozen=True, slots=True)
class Request:
    line: str  # the request line, e.g. "GET /download HTTP/1.1"
    range_start: int | None  # from `Range: bytes=N-`; None without a Range header


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    start: int  # the first body byte that follows (0 for a 200)
    length: int  # body bytes that follow (Content-Length)


def _headers(lines: list[str]) -> dict[str, str]:
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise HttpError(f"malformed header line {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def _lines(head: bytes) -> list[str]:
    if len(head) > MAX_HEAD or not head.endswith(END):
        raise HttpError(f"a head of {len(head)} bytes that does not end the head")
    return head[: -len(END)].decode("latin-1").split("\r\n")


def request(host: str, start: int) -> bytes:
    """The GET for the body from byte `start` (the whole body for 0: no Range header)."""
    lines = [f"GET {PATH} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if start:
        lines.append(f"Range: bytes={start}-")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def parse_request(head: bytes) -> Request:
    line, *rest = _lines(head)
    method, _, target = line.partition(" ")
    if method != "GET" or not target.startswith(f"{PATH} HTTP/1."):
        raise HttpError(f"unexpected request {line[:60]!r}")
    value = _headers(rest).get("range")
    if value is None:
        return Request(line, None)
    match = RANGE.match(value)
    if match is None:
        raise HttpError(f"unsupported Range {value[:40]!r} (only bytes=N-)")
    return Request(line, int(match.group(1)))


def response_head(size: int, start: int | None) -> tuple[int, bytes]:
    """(status, head) answering a request from `start` (None: no Range) for a `size`-byte
    body; 416 has no body."""
    if start is None:
        status, lines = 200, ["HTTP/1.1 200 OK", f"Content-Length: {size}"]
    elif start >= size:
        status = 416
        lines = ["HTTP/1.1 416 Range Not Satisfiable", f"Content-Range: bytes */{size}"]
        lines.append("Content-Length: 0")
    else:
        status = 206
        lines = [
            "HTTP/1.1 206 Partial Content",
            f"Content-Range: bytes {start}-{size - 1}/{size}",
            f"Content-Length: {size - start}",
        ]
    lines += ["Accept-Ranges: bytes", "Content-Type: application/octet-stream"]
    lines.append("Connection: close")
    return status, ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def parse_response(head: bytes, size: int) -> Response:
    """The answer to a request for a `size`-byte body: what follows, from which byte."""
    line, *rest = _lines(head)
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"malformed status line {line[:60]!r}")
    status = int(parts[1])
    headers = _headers(rest)
    try:
        length = int(headers.get("content-length", ""))
    except ValueError:
        raise HttpError("no Content-Length") from None
    if status == 200:
        return Response(status, 0, length)
    if status != 206:
        raise HttpError(f"status {status} ({line[:60]!r})")
    match = CONTENT_RANGE.match(headers.get("content-range", ""))
    if match is None:
        raise HttpError(f"206 without a byte Content-Range ({headers.get('content-range')!r})")
    first, last, total = (int(g) for g in match.groups())
    if total != size or last - first + 1 != length:
        raise HttpError(f"Content-Range {first}-{last}/{total} does not fit the body")
    return Response(status, first, length)

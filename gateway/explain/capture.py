"""A captured request, read from what an integrator has at hand (issue #19 §1):

* a raw HTTP/1.1 request (``GET /accounts HTTP/1.1``, header lines, blank line; CRLF or LF),
* a ``curl`` command line (``-X``, ``-H``, ``-d``/``--data*``, ``-I``, ``--cert``, the URL),
* a HAR file (``log.entries[n].request``, ``--entry n``; default: the first entry whose response
  was a 4xx/5xx, else the first) or a single HAR entry / request object.

Only the request line and headers matter to the decision; a body is ignored. Bounded: the input
is read up to ``MAX_INPUT_BYTES``.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ("MAX_INPUT_BYTES", "CaptureError", "Captured", "parse_capture")

MAX_INPUT_BYTES = 4 * 1024 * 1024


class CaptureError(ValueError):
    """The input is not a request explain can read; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class Captured:
    method: str
    target: str  # origin-form: path and query, as sent
    headers: tuple[tuple[str, str], ...]
    fmt: str  # raw | curl | har
    # curl --cert: the client certificate file the command would present (PEM).
    cert_file: str | None = None


def parse_capture(text: str, *, entry: int | None = None) -> Captured:
    if len(text) > MAX_INPUT_BYTES:
        raise CaptureError(f"input larger than {MAX_INPUT_BYTES} bytes")
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        return _har(stripped, entry)
    if stripped.startswith("curl ") or stripped.startswith("curl\t"):
        return _curl(stripped)
    return _raw(text)


def _raw(text: str) -> Captured:
    head = text.replace("\r\n", "\n").split("\n\n", 1)[0]
    lines = head.lstrip("\n").split("\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise CaptureError("expected a raw HTTP request ('GET /path HTTP/1.1' then header lines), "
                           "a curl command line, or a HAR file")
    method, target, _version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # obsolete line folding: one more line of the value
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise CaptureError(f"not a header line: {line[:60]!r}")
        headers.append((name, value.strip(" \t")))
    return Captured(method, _origin_form(target, headers), tuple(headers), "raw")


def _origin_form(target: str, headers: list[tuple[str, str]]) -> str:
    """An absolute-form target (proxy request) becomes path + query, its authority the Host."""
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        if not any(n.lower() == "host" for n, _ in headers):
            headers.insert(0, ("Host", parts.netloc))
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return target


_DATA = ("-d", "--data", "--data-raw", "--data-binary", "--data-ascii", "--data-urlencode", "-F", "--form", "--json")
# Options that take a value we do not need (skipped with it).
_SKIP_VALUE = ("-o", "--output", "-u", "--user", "-A", "--user-agent", "-e", "--referer", "-b", "--cookie",
               "--key", "--cacert", "--capath", "--connect-timeout", "-m", "--max-time", "--resolve",
               "--connect-to", "--cert-type", "--key-type", "-w", "--write-out", "--proxy", "-x", "--retry")


def _curl(text: str) -> Captured:
    try:
        args = shlex.split(text.replace("\\\n", " "))
    except ValueError as exc:
        raise CaptureError(f"curl command line: {exc}") from None
    method: str | None = None
    url: str | None = None
    headers: list[tuple[str, str]] = []
    cert: str | None = None
    has_data = False
    it = iter(args[1:])
    for arg in it:
        if arg in ("-X", "--request"):
            method = next(it, "GET")
        elif arg.startswith("-X") and len(arg) > 2:
            method = arg[2:]
        elif arg in ("-H", "--header"):
            line = next(it, "")
            name, sep, value = line.partition(":")
            if sep and name.strip():
                headers.append((name.strip(), value.strip(" \t")))
        elif arg in _DATA:
            next(it, None)
            has_data = True
        elif arg in ("-I", "--head"):
            method = "HEAD"
        elif arg in ("-E", "--cert"):
            cert = next(it, None)
            cert = cert.split(":", 1)[0] if cert else None  # file:password
        elif arg == "--url":
            url = next(it, None)
        elif arg in _SKIP_VALUE:
            next(it, None)
        elif not arg.startswith("-") and url is None:
            url = arg
    if url is None:
        raise CaptureError("curl command line without a URL")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if not any(n.lower() == "host" for n, _ in headers):
        headers.insert(0, ("Host", parts.netloc))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Captured((method or ("POST" if has_data else "GET")).upper(), target, tuple(headers), "curl", cert)


def _har(text: str, entry: int | None) -> Captured:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CaptureError(f"HAR: not JSON ({exc})") from None
    entries: list[Any]
    if isinstance(doc, dict) and isinstance(doc.get("log"), dict):
        entries = doc["log"].get("entries") or []
    elif isinstance(doc, list):
        entries = doc
    else:
        entries = [doc]
    if not entries:
        raise CaptureError("HAR: no entries")
    if entry is None:
        failed = [i for i, e in enumerate(entries) if _status(e) >= 400]
        entry = failed[0] if failed else 0
    if not 0 <= entry < len(entries):
        raise CaptureError(f"HAR: no entry {entry} (it has {len(entries)})")
    chosen = entries[entry]
    req = chosen.get("request", chosen) if isinstance(chosen, dict) else None
    if not isinstance(req, dict) or not isinstance(req.get("url"), str):
        raise CaptureError("HAR: the entry has no request with a url")
    parts = urlsplit(req["url"])
    headers: list[tuple[str, str]] = []
    authority = parts.netloc
    for h in req.get("headers") or []:
        if not isinstance(h, dict) or not isinstance(h.get("name"), str):
            continue
        name, value = h["name"], str(h.get("value", ""))
        if name.startswith(":"):  # HTTP/2 pseudo-headers as browsers record them
            if name == ":authority":
                authority = value
            continue
        if name.lower() == "host":
            authority = value
        else:
            headers.append((name, value))
    headers.insert(0, ("Host", authority))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Captured(str(req.get("method", "GET")).upper(), target, tuple(headers), "har")


def _status(entry: Any) -> int:
    resp = entry.get("response") if isinstance(entry, dict) else None
    status = resp.get("status") if isinstance(resp, dict) else None
    return status if isinstance(status, int) else 0

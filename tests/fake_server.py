"""A fake Zenodo (records API and file server) on 127.0.0.1 with Range support and faults on demand.

Files are served at `/files/{key}`, so any source whose URLs are `{base}/{key}` can use it with
`--base-url {url}/files`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

RECORD = "4895643"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class FakeZenodo:
    """A Zenodo records API and file server with switches for faults."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.checksums: dict[str, str] = {}  # key -> md5 announced in the record (default: the true md5)
        self.checksum_fields: dict[str, Optional[str]] = {}  # key -> the record's whole `checksum` (None: left out)
        self.cut_always: dict[str, int] = {}  # key -> bytes sent before every connection is dropped
        self.ignore_range: set[str] = set()  # keys answered 200 with the whole file, whatever Range asks
        self.wrong_range: set[str] = set()  # keys answered 206 from byte 0, whatever Range asks
        self.gzip_body: set[str] = set()  # keys sent gzip-encoded although identity was asked
        self.trickle: dict[str, float] = {}  # key -> seconds between single bytes
        self.record_body: Optional[bytes] = None  # the records API's answer instead of the record's JSON
        self.redirect_loop: set[str] = set()  # paths answered 302 with a Location back to themselves
        self.cut_once: dict[str, int] = {}  # key -> bytes sent before the connection is dropped (once)
        self.hold_once: dict[str, tuple[int, threading.Event]] = {}  # key -> (bytes sent, event for the rest)
        self.corrupt_once: set[str] = set()
        self.corrupt_always: set[str] = set()
        self.corrupt_offset: dict[str, int] = {}  # key -> which byte a corruption flips (default: the first)
        self.status: dict[str, int] = {}  # path -> HTTP status to answer (always)
        self.status_once: dict[str, int] = {}  # path -> HTTP status to answer once
        self.requests: list[tuple[str, Optional[str]]] = []  # (path, Range header)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def record(self) -> dict:
        files = []
        for key, data in self.files.items():
            entry = {"key": key, "size": len(data), "links": {"self": f"{self.url}/files/{key}"}}
            checksum = self.checksum_fields.get(key, "md5:" + self.checksums.get(key, md5(data)))
            if checksum is not None:
                entry["checksum"] = checksum
            files.append(entry)
        return {"id": int(RECORD), "files": files}

    def file_gets(self, key: str) -> list[Optional[str]]:
        """Range headers of the GETs of one file (None for a plain GET)."""
        return [rng for path, rng in self.requests if path == f"/files/{key}"]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                with fake.lock:
                    fake.requests.append((path, self.headers.get("Range")))
                    code = fake.status.get(path) or fake.status_once.pop(path, None)
                if code:
                    self.send_error(code)
                    return
                if path in fake.redirect_loop:
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path == f"/api/records/{RECORD}":
                    body = fake.record_body if fake.record_body is not None else json.dumps(fake.record()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                key = path[len("/files/") :]
                if not path.startswith("/files/") or key not in fake.files:
                    self.send_error(404)
                    return
                data = fake.files[key]
                with fake.lock:
                    if key in fake.corrupt_always or key in fake.corrupt_once:
                        fake.corrupt_once.discard(key)
                        at = fake.corrupt_offset.get(key, 0)
                        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
                    cut = fake.cut_once.pop(key, None)
                    cut = fake.cut_always.get(key, cut)
                    hold = fake.hold_once.pop(key, None)
                start = 0
                rng = self.headers.get("Range")
                if key in fake.wrong_range and rng:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
                elif key in fake.gzip_body:
                    self.send_response(200)
                    self.send_header("Content-Encoding", "gzip")
                    data = gzip.compress(data)
                elif key in fake.ignore_range:
                    self.send_response(200)
                elif rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes=") : -1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if key in fake.trickle:  # one byte at a time, for as long as the client listens
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(fake.trickle[key])
                    except OSError:
                        pass
                    return
                if hold is not None:  # a slow transfer: part now, the rest once the test says so
                    sent, event = hold
                    self.wfile.write(body[:sent])
                    self.wfile.flush()
                    event.wait(30)
                    body = body[sent:]
                self.wfile.write(body)

        return Handler

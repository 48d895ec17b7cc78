"""A fake Zenodo (records API and file server) on 127.0.0.1 with Range support and faults on demand.

Files are served at `/files/{key}`, so any source whose URLs are `{base}/{key}` can use it with
`--base-url {url}/files`.
"""

from __future__ import annotations

import hashlib
import json
import threading
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
        return {
            "id": int(RECORD),
            "files": [
                {
                    "key": key,
                    "size": len(data),
                    "checksum": "md5:" + self.checksums.get(key, md5(data)),
                    "links": {"self": f"{self.url}/files/{key}"},
                }
                for key, data in self.files.items()
            ],
        }

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
                if path == f"/api/records/{RECORD}":
                    body = json.dumps(fake.record()).encode()
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
                    hold = fake.hold_once.pop(key, None)
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
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
                if hold is not None:  # a slow transfer: part now, the rest once the test says so
                    sent, event = hold
                    self.wfile.write(body[:sent])
                    self.wfile.flush()
                    event.wait(30)
                    body = body[sent:]
                self.wfile.write(body)

        return Handler

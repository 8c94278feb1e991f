"""Real HTTP servers on loopback for image-fetching tests: files from a folder (ImageServer), or routes set per
test (Site); and image files that only declare a size (decompression bombs as far as a header goes)."""
from __future__ import annotations

import functools
import http.server
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ImageServer:
    """Files of a folder over HTTP; `hits` counts the GET requests of each path."""

    def __init__(self, root: Path):
        self.root, self.hits = root, {}
        handler = functools.partial(_QuietHandler, directory=str(root), hits=self.hits)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"http://{self.host}/{name}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, hits: dict, **kwargs):
        self.hits = hits
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


class Site:
    """A loopback HTTP server whose routes are set per test; it counts the requests of each path."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.hits: dict[str, int] = {}
        self.headers: list[dict] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _route(self):
                path = self.path.split("?", 1)[0]
                site.hits[path] = site.hits.get(path, 0) + 1
                site.headers.append(dict(self.headers))
                handler = site.routes.get(path)
                return handler(self) if callable(handler) else (handler or (404, {}, b"not found"))

            def do_GET(self):
                status, headers, body = self._route()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers and headers.get("X-No-Length") is None:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size (no image data): enough for the header check, never decodable."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def jpeg_header(width: int, height: int) -> bytes:
    """A baseline JPEG that only declares its size (a start-of-frame segment, no scan): never decodable."""
    import struct

    frame = struct.pack(">BHHB", 8, height, width, 3) + bytes([1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1])
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(frame) + 2) + frame + b"\xff\xd9"

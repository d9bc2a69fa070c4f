"""Tiny HTTP upstreams for Envoy tests: each answers with its own name, optionally slowly or with errors."""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Upstream:
    name: str
    port: int
    delay_s: float = 0.0
    status: int = 200
    hits: int = 0
    #: Where to listen: loopback, or (tests/k8s, in its network namespace) a pod's own IP.
    host: str = "127.0.0.1"
    _server: http.server.ThreadingHTTPServer | None = field(default=None, repr=False)

    def start(self) -> Upstream:
        up = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Without it every request through Envoy gains ~40 ms (Nagle + delayed ACK).
            disable_nagle_algorithm = True

            def _reply(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                up.hits += 1
                if up.delay_s:
                    time.sleep(up.delay_s)
                body = up.name.encode()
                self.send_response(up.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _reply
            do_POST = _reply

            def log_message(self, *args: object) -> None:
                pass

        http.server.ThreadingHTTPServer.daemon_threads = True
        self._server = http.server.ThreadingHTTPServer((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name=f"upstream-{self.name}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

"""A small HTTP server of routes on a daemon thread: the consumer's and the ``--processes`` parent's."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fastconsumer.errors import ConfigError

log = logging.getLogger("fastconsumer.metrics")

Route = Callable[[], tuple[int, str, bytes]]


class HttpServer:
    """``routes`` (path -> callable returning status, content type, body) on a daemon thread."""

    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                route = routes.get(self.path.split("?", 1)[0])
                try:
                    status, kind, body = route() if route else (404, "text/plain", b"not found\n")
                except Exception as exc:  # a scrape must not kill the server
                    log.exception("serving %s failed", self.path)
                    status, kind, body = 500, "text/plain", f"{type(exc).__name__}: {exc}\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("%s %s", self.address_string(), format % args)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="fastconsumer-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()


def json_route(probe: Callable[[], tuple[bool, dict[str, Any]]]) -> Route:
    def route() -> tuple[int, str, bytes]:
        ok, body = probe()
        return (200 if ok else 503), "application/json", (json.dumps(body) + "\n").encode()

    return route


def registry_route(registry: CollectorRegistry) -> Route:
    return lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry))

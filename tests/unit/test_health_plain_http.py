"""health_http.plain_http_get against a real HTTP server on 127.0.0.1 (no stand-in client)."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import health_http as hh


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/health":
            body = b'{"status": "healthy"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Agent", self.headers.get("User-Agent", ""))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/health")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/slow":
            time.sleep(1.5)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            body = b'{"detail": "Not Found"}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_ok_body_headers_and_agent(server):
    resp = hh.plain_http_get(server + "/health", 2, "ner11.ops-test")
    assert resp.error is None and resp.status == 200
    assert resp.json() == {"status": "healthy"}
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-agent"] == "ner11.ops-test"
    assert resp.latency_ms > 0


def test_error_status_keeps_its_body(server):
    resp = hh.plain_http_get(server + "/nope", 2)
    assert resp.error is None and resp.status == 404
    assert resp.json() == {"detail": "Not Found"}


def test_redirect_is_followed(server):
    resp = hh.plain_http_get(server + "/moved", 2)
    assert resp.status == 200 and resp.json() == {"status": "healthy"}


def test_timeout_is_an_error_not_an_exception(server):
    resp = hh.plain_http_get(server + "/slow", 0.3)
    assert resp.status is None and resp.error_kind == "timeout"


def test_refused_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    resp = hh.plain_http_get("http://127.0.0.1:%d/health" % port, 2)
    assert resp.status is None and resp.error_kind == "refused"


def test_only_plain_http():
    resp = hh.plain_http_get("file:///etc/passwd", 2)
    assert resp.status is None and resp.error == "not a plain http:// URL"

"""docker_socket.Engine against a real HTTP server on a UNIX socket (answers like the engine API)."""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import threading

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import docker_socket as ds

ROUTES = {
    "/info": (200, {"ServerVersion": "27.0"}),
    "/containers/json?all=1": (200, [{"Id": "a"}, {"Id": "gone"}]),
    "/containers/a/json": (200, {"Id": "a", "Name": "/a"}),
    "/networks/n1": (200, {"Name": "n1"}),
    "/boom": (500, {"message": "engine broke"}),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server hook name
        status, body = ROUTES.get(self.path, (404, {"message": "not found"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _addr = super().get_request()
        return request, ("local", 0)


@pytest.fixture
def engine(tmp_path):
    path = str(tmp_path / "docker.sock")
    server = UnixHTTPServer(path, Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ds.Engine("unix://" + path, timeout=5)
    server.shutdown()
    server.server_close()
    os.unlink(path)


def test_reads_info_containers_and_networks(engine):
    assert engine.info() == {"ServerVersion": "27.0"}
    assert engine.containers() == [{"Id": "a", "Name": "/a"}]
    assert engine.network_exists("n1") and not engine.network_exists("n2")


def test_errors_name_the_engine(engine, tmp_path):
    with pytest.raises(ds.EngineError, match="answered 500 to GET /boom: .*engine broke"):
        engine.get("/boom")
    with pytest.raises(ds.EngineError, match="missing.sock"):
        ds.Engine("unix://%s/missing.sock" % tmp_path).info()
    with pytest.raises(ds.EngineError, match="unsupported docker host"):
        ds.Engine("ssh://host")
    assert ds.Engine().host == ds.DEFAULT_HOST
    assert ds.Engine("tcp://127.0.0.1:9")._connect().port == 9

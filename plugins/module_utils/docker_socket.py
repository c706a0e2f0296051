# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A read-only Docker Engine API client on the standard library (no docker CLI, no SDK).

Reads containers and engine facts over the engine's UNIX socket (or ``tcp://`` without TLS),
so discovery works on any host that can reach the engine - a bare host with only python3
and the mounted socket included.
"""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import quote, urlparse

DEFAULT_HOST = "unix:///var/run/docker.sock"


class EngineError(Exception):
    """The engine could not be reached or answered with an error."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Engine(object):
    def __init__(self, host=None, timeout=30):
        self.host = host or DEFAULT_HOST
        self.timeout = timeout
        url = urlparse(self.host)
        if url.scheme == "unix":
            self._connect = lambda: _UnixConnection(url.path, timeout)
        elif url.scheme in ("tcp", "http"):
            self._connect = lambda: http.client.HTTPConnection(url.hostname, url.port or 2375, timeout=timeout)
        else:
            raise EngineError("unsupported docker host %r: use unix:///path/to/docker.sock or tcp://host:port" % self.host)

    def get(self, path):
        conn = self._connect()
        try:
            conn.request("GET", path, headers={"Host": "docker"})
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EngineError("%s: %s" % (self.host, exc)) from None
        finally:
            conn.close()
        if resp.status == 404:
            return None
        if resp.status >= 400:
            raise EngineError(
                "%s answered %d to GET %s: %s" % (self.host, resp.status, path, body[:200].decode("utf-8", "replace"))
            )
        return json.loads(body.decode("utf-8") or "null")

    def info(self):
        return self.get("/info") or {}

    def containers(self):
        """``docker inspect`` documents of every container (a container removed meanwhile is skipped)."""
        out = []
        for summary in self.get("/containers/json?all=1") or []:
            doc = self.get("/containers/%s/json" % quote(summary["Id"]))
            if doc is not None:
                out.append(doc)
        return out

    def network_exists(self, name):
        return self.get("/networks/%s" % quote(name)) is not None

# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NER11 stack model (DESIGN section 3).

One data structure describes a stack: its services ``postgres``, ``api`` and
``frontend`` with image, container name, ports, environment, volumes,
healthcheck, stop timeout and dependencies. Every default lives here, in one
place; inventories override only what differs. ``normalize()`` merges the
overrides, validates them (G5 port collisions, G6 healthchecks, G8 stop
timeouts, dependency cycles) and derives the start and stop order.

Plain Python: no Ansible import, unit-tested in tests/unit.
"""

from __future__ import annotations

import copy
import re

from ansible_collections.ner11.ops.plugins.module_utils.identifiers import (
    NAME_RULE,
    is_container_name,
    is_host_port,
    is_name,
    is_project_name,
)

SERVICES = ("postgres", "api", "frontend")

# The one map of the inventory groups to the service each group runs (docs/multi-host.md).
GROUP_SERVICES = {"ner11_db": "postgres", "ner11_api": "api", "ner11_frontend": "frontend"}


def host_services(services=None, groups=None):
    """The services a host runs, in SERVICES order: ``services`` when given, else those of its
    ner11_* groups, else all three (a host in none of them runs the whole stack)."""
    if services:
        return [s for s in SERVICES if s in services]
    mapped = {GROUP_SERVICES[g] for g in (groups or []) if g in GROUP_SERVICES}
    return [s for s in SERVICES if s in mapped] if mapped else list(SERVICES)


_DURATION_RE = re.compile(r"^[0-9]+(ms|s|m|h)$")
_SIZE_RE = re.compile(r"^[1-9][0-9]*[kmg]$")


class StackModelError(ValueError):
    """The stack model given in inventory is invalid; the message names the fix."""


def _http_probe(port, path):
    # The reference images ship bash, not curl (G32). One bash process with /dev/tcp costs a few
    # milliseconds of CPU; a python3 probe costs ~50-350 ms, and Docker 20.10 (Debian 12's engine)
    # does not kill a probe that exceeds its timeout, so on a busy host slow probes pile up (dozens
    # per container were seen) and load the host further. `read -t` bounds the wait for the answer.
    code = (
        "exec 3<>/dev/tcp/127.0.0.1/%d || exit 1; "
        "printf 'GET %s HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3; "
        "read -t 4 -r status <&3; [[ $status == *' 200 '* ]]" % (port, path)
    )
    return ["CMD", "bash", "-c", code]


def default_stack():
    """Return the defaults of a stack (a new copy every call)."""
    return {
        "project": "ner11",
        # network, config_dir and container names are derived from the project
        # when left empty (G1: nothing hard-coded to "ner11").
        "network": "",
        "config_dir": "",
        "bind_address": "127.0.0.1",
        "db_name": "ner11_db",
        "db_user": "postgres",
        # How secrets reach containers: "file" mounts a 0600 file and sets
        # <VAR>_FILE (nothing in `docker inspect`), "env" sets <VAR> directly.
        "secrets_mode": "file",
        "labels": {},
        # Multi-host (docs/multi-host.md): where the services of OTHER hosts answer, as host:port.
        # ``postgres``: the database the api connects to (empty: the ``postgres`` container on
        # this host's stack network); ``api``: the APIs the frontend balances over (empty: the
        # ``api`` container on this host's network). The internal role common fills them from
        # the inventory's ner11_db and ner11_api hosts for a host that does not run them.
        "peers": {"postgres": "", "api": []},
        "canary_tables": ["vendor_equipment", "threat_intelligence", "compliance_frameworks"],
        "services": {
            "postgres": {
                "image": "ner11/postgres:ref",
                "container_name": "",
                "ports": [{"host": 5432, "container": 5432}],
                "env": {},
                "secrets": {"POSTGRES_PASSWORD": "db_password"},
                "volumes": [
                    {"source": "{project}_postgres_data", "target": "/var/lib/postgresql/data"},
                ],
                # G6: postgres gets a healthcheck; authenticated SELECT 1 is ner_health's job.
                "healthcheck": {
                    "test": ["CMD-SHELL", "pg_isready -U {db_user} -d {db_name} -h 127.0.0.1"],
                    "interval": "2s",
                    "timeout": "5s",
                    "retries": 30,
                    "start_period": "120s",
                },
                "health_path": "",
                "stop_timeout": 120,  # G8 [SVC] values
                "start_timeout": 120,  # G7: 60 s, 120 s on first init
                "depends_on": [],
                "restart_policy": "unless-stopped",
                "memory": "",
                # Docker's default /dev/shm is 64 MB: parallel maintenance (CREATE INDEX, VACUUM with
                # parallel workers) and parallel queries on a 1 GB database fail with "could not resize
                # shared memory segment". Sized here, the one defaults place.
                "shm_size": "256m",
                # json-file limits (runbooks f.5: postgres 100m x 5) so logs cannot fill the disk.
                "logging": {"driver": "json-file", "max_size": "100m", "max_file": 5},
            },
            "api": {
                "image": "ner11/ner-api:ref",
                "container_name": "",
                "ports": [{"host": 8000, "container": 8000}],
                "env": {},
                "secrets": {"POSTGRES_PASSWORD": "db_password"},
                "volumes": [{"source": "{project}_models", "target": "/app/models"}],
                "healthcheck": {
                    "test": _http_probe(8000, "/health"),
                    "interval": "2s",
                    "timeout": "5s",
                    "retries": 30,
                    "start_period": "60s",
                },
                "health_path": "/health",
                "stop_timeout": 60,
                "start_timeout": 90,
                "depends_on": ["postgres"],
                "restart_policy": "unless-stopped",
                "memory": "",
                "shm_size": "",
                "logging": {"driver": "json-file", "max_size": "50m", "max_file": 3},
            },
            "frontend": {
                "image": "ner11/frontend:ref",
                "container_name": "",
                "ports": [{"host": 3000, "container": 3000}],
                "env": {},
                "secrets": {},
                "volumes": [],
                "healthcheck": {
                    "test": _http_probe(3000, "/"),
                    "interval": "2s",
                    "timeout": "5s",
                    "retries": 30,
                    "start_period": "60s",
                },
                "health_path": "/",
                "stop_timeout": 30,
                "start_timeout": 120,
                "depends_on": ["api"],
                "restart_policy": "unless-stopped",
                "memory": "",
                "shm_size": "",
                "logging": {"driver": "json-file", "max_size": "50m", "max_file": 3},
            },
        },
    }


def _merge(base, override, path):
    """Deep-merge ``override`` into ``base``; lists and scalars replace."""
    if not isinstance(override, dict):
        raise StackModelError("%s must be a mapping, got %s" % (path, type(override).__name__))
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key in out and isinstance(out[key], dict) and isinstance(value, dict) and key not in ("env", "labels", "secrets"):
            out[key] = _merge(out[key], value, "%s.%s" % (path, key))
        elif key in out and isinstance(out[key], dict) and value is not None and not isinstance(value, dict):
            raise StackModelError("%s.%s must be a mapping" % (path, key))
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_keys(given, allowed, path):
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise StackModelError(
            "unknown key(s) %s in %s; valid keys are: %s" % (", ".join(unknown), path, ", ".join(sorted(allowed)))
        )


def _int(value, path, low, high):
    if isinstance(value, bool):
        raise StackModelError("%s must be an integer, got %r" % (path, value))
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise StackModelError("%s must be an integer, got %r" % (path, value)) from None
    if not low <= number <= high:
        raise StackModelError("%s must be between %d and %d, got %d" % (path, low, high, number))
    return number


def topological_order(services):
    """Start order: dependencies first; ties broken by the canonical order."""
    rank = {name: i for i, name in enumerate(SERVICES)}
    remaining = {name: set(svc["depends_on"]) for name, svc in services.items()}
    order = []
    while remaining:
        ready = sorted((n for n, deps in remaining.items() if not deps), key=lambda n: (rank.get(n, 99), n))
        if not ready:
            raise StackModelError(
                "services.*.depends_on has a cycle between %s; remove one of the dependencies" % ", ".join(sorted(remaining))
            )
        for name in ready:
            order.append(name)
            del remaining[name]
        for deps in remaining.values():
            deps.difference_update(ready)
    return order


def _fmt(value, names):
    if isinstance(value, str):
        try:
            return value.format(**names)
        except (KeyError, IndexError, ValueError) as exc:
            raise StackModelError("cannot expand %r: unknown placeholder %s" % (value, exc)) from None
    if isinstance(value, list):
        return [_fmt(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _fmt(v, names) for k, v in value.items()}
    return value


def _logging(value, path):
    """The json-file log limits of one container: {driver, max_size, max_file} (or no limits: driver only)."""
    if not value:
        return {"driver": "json-file", "max_size": "", "max_file": 0}
    if not isinstance(value, dict):
        raise StackModelError("%s must be a mapping with driver, max_size and max_file" % path)
    _check_keys(value, ("driver", "max_size", "max_file"), path)
    driver = str(value.get("driver") or "json-file")
    if driver not in ("json-file", "local"):
        raise StackModelError(
            "%s.driver must be 'json-file' or 'local' (drivers whose files the host rotates), got %r" % (path, driver)
        )
    size = str(value.get("max_size") or "").lower()
    if size and not _SIZE_RE.match(size):
        raise StackModelError("%s.max_size must be a size such as '50m', got %r" % (path, value.get("max_size")))
    count = _int(value.get("max_file") or 0, path + ".max_file", 0, 100) if value.get("max_file") else 0
    if count and not size:
        raise StackModelError("%s.max_file needs max_size (Docker rotates by size)" % path)
    return {"driver": driver, "max_size": size, "max_file": count}


def _peer(value, path):
    """One host:port peer address, validated (the port in 1..65535)."""
    text = str(value).strip()
    if not is_host_port(text):
        raise StackModelError("%s must be host:port such as '10.0.0.5:8000', got %r" % (path, value))
    return text


def _peers(value):
    """The ``peers`` mapping: postgres (one host:port or empty) and api (a list of host:port)."""
    if not isinstance(value, dict):
        raise StackModelError("ner11_stack.peers must be a mapping with 'postgres' and 'api'")
    _check_keys(value, ("postgres", "api"), "ner11_stack.peers")
    postgres = value.get("postgres") or ""
    api = value.get("api") or []
    if isinstance(api, str):
        api = [a for a in re.split(r"[,\s]+", api) if a]
    if not isinstance(api, list):
        raise StackModelError("ner11_stack.peers.api must be a list of host:port")
    out_api = []
    for i, address in enumerate(api):
        address = _peer(address, "ner11_stack.peers.api[%d]" % i)
        if address in out_api:
            raise StackModelError("ner11_stack.peers.api lists %s twice; list each API once" % address)
        out_api.append(address)
    return {"postgres": _peer(postgres, "ner11_stack.peers.postgres") if postgres else "", "api": out_api}


def log_options(logging):
    """The Docker log options of a normalized ``logging`` mapping (strings, as the engine stores them)."""
    out = {}
    if logging.get("max_size"):
        out["max-size"] = logging["max_size"]
        if logging.get("max_file"):
            out["max-file"] = str(logging["max_file"])
    return out


def normalize(stack=None):
    """Return the complete, validated stack model for the given overrides."""
    defaults = default_stack()
    stack = stack or {}
    _check_keys(stack, defaults, "ner11_stack")
    services_in = stack.get("services") or {}
    if not isinstance(services_in, dict):
        raise StackModelError("ner11_stack.services must be a mapping of service name to settings")
    _check_keys(services_in, SERVICES, "ner11_stack.services")
    for name, svc in services_in.items():
        if svc is not None:
            if not isinstance(svc, dict):
                raise StackModelError("ner11_stack.services.%s must be a mapping" % name)
            _check_keys(svc, defaults["services"][name], "ner11_stack.services.%s" % name)
    model = _merge(defaults, {k: v for k, v in stack.items() if v is not None}, "ner11_stack")

    project = str(model["project"])
    if not is_project_name(project):
        raise StackModelError(
            "ner11_stack.project %r is not a valid project name: use lowercase letters, digits, '-' and '_'" % project
        )
    model["network"] = model["network"] or "%s_default" % project
    model["config_dir"] = model["config_dir"] or "/var/lib/ner11/%s" % project
    if not str(model["config_dir"]).startswith("/"):
        raise StackModelError("ner11_stack.config_dir must be an absolute path, got %r" % model["config_dir"])
    if model["secrets_mode"] not in ("file", "env"):
        raise StackModelError("ner11_stack.secrets_mode must be 'file' or 'env', got %r" % model["secrets_mode"])
    model["peers"] = _peers(model["peers"])
    names = {"project": project, "db_name": model["db_name"], "db_user": model["db_user"]}
    for key in ("db_name", "db_user"):
        if not is_name(str(model[key])):
            raise StackModelError("ner11_stack.%s %r is not a valid PostgreSQL name: %s" % (key, model[key], NAME_RULE))

    seen_ports = {}
    seen_names = {}
    for name in SERVICES:
        svc = model["services"][name]
        path = "ner11_stack.services.%s" % name
        svc["service"] = name
        svc["container_name"] = svc["container_name"] or "%s-%s-1" % (project, name)
        if not is_container_name(svc["container_name"]):
            raise StackModelError("%s.container_name %r is not a valid container name" % (path, svc["container_name"]))
        if svc["container_name"] in seen_names:
            raise StackModelError(
                "%s.container_name %r is also used by %s; give each service its own name"
                % (path, svc["container_name"], seen_names[svc["container_name"]])
            )
        seen_names[svc["container_name"]] = name
        if not svc["image"] or not isinstance(svc["image"], str):
            raise StackModelError("%s.image must be an image reference such as 'ner11/postgres:ref'" % path)
        for timeout in ("stop_timeout", "start_timeout"):
            svc[timeout] = _int(svc[timeout], "%s.%s" % (path, timeout), 1, 3600)
        deps = svc["depends_on"] or []
        for dep in deps:
            if dep not in SERVICES:
                raise StackModelError("%s.depends_on names unknown service %r; use one of %s" % (path, dep, ", ".join(SERVICES)))
            if dep == name:
                raise StackModelError("%s.depends_on must not name the service itself" % path)
        svc["depends_on"] = list(deps)

        ports = []
        for i, port in enumerate(svc["ports"] or []):
            ppath = "%s.ports[%d]" % (path, i)
            if not isinstance(port, dict):
                raise StackModelError("%s must be a mapping with 'host' and 'container'" % ppath)
            _check_keys(port, ("host", "container", "bind"), ppath)
            bind = port.get("bind") or model["bind_address"]
            host_port = _int(port.get("host"), ppath + ".host", 1, 65535)
            container_port = _int(port.get("container"), ppath + ".container", 1, 65535)
            # G5: a host port may be published once; 0.0.0.0 collides with every address.
            for (other_bind, other_port), owner in seen_ports.items():
                if other_port == host_port and (other_bind == bind or "0.0.0.0" in (bind, other_bind)):
                    raise StackModelError(
                        "%s: host port %d is already published by %s; choose another host port" % (ppath, host_port, owner)
                    )
            seen_ports[(bind, host_port)] = name
            ports.append(
                {
                    "bind": bind,
                    "host": host_port,
                    "container": container_port,
                    "spec": "%s:%d:%d" % (bind, host_port, container_port),
                }
            )
        svc["ports"] = ports

        volumes = []
        for i, vol in enumerate(svc["volumes"] or []):
            vpath = "%s.volumes[%d]" % (path, i)
            if not isinstance(vol, dict) or "source" not in vol or "target" not in vol:
                raise StackModelError("%s must be a mapping with 'source' and 'target'" % vpath)
            _check_keys(vol, ("source", "target", "type", "read_only"), vpath)
            source = _fmt(vol["source"], names)
            kind = vol.get("type") or ("bind" if source.startswith("/") else "volume")
            if kind not in ("bind", "volume"):
                raise StackModelError("%s.type must be 'bind' or 'volume'" % vpath)
            volumes.append(
                {"source": source, "target": vol["target"], "type": kind, "read_only": bool(vol.get("read_only", False))}
            )
        svc["volumes"] = volumes

        health = svc["healthcheck"]
        if health:
            if not isinstance(health, dict) or not health.get("test"):
                raise StackModelError("%s.healthcheck needs a 'test' list (or set healthcheck to null)" % path)
            health = _fmt(health, names)
            for key in ("interval", "timeout", "start_period"):
                if key in health and not _DURATION_RE.match(str(health[key])):
                    raise StackModelError("%s.healthcheck.%s must be a duration such as '5s', got %r" % (path, key, health[key]))
            health["retries"] = _int(health.get("retries", 3), path + ".healthcheck.retries", 1, 1000)
            svc["healthcheck"] = health
        svc["shm_size"] = str(svc.get("shm_size") or "").lower()
        if svc["shm_size"] and not _SIZE_RE.match(svc["shm_size"]):
            raise StackModelError(
                "%s.shm_size must be a size such as '256m' (or empty for Docker's default), got %r" % (path, svc["shm_size"])
            )
        svc["logging"] = _logging(svc.get("logging"), path + ".logging")
        svc["env"] = {str(k): str(v) for k, v in (svc["env"] or {}).items()}
        svc["labels"] = dict(model["labels"])
        svc["labels"].update({"io.ner11.project": project, "io.ner11.service": name})
        if svc["ports"] and svc["health_path"]:
            first = svc["ports"][0]
            host = "127.0.0.1" if first["bind"] in ("0.0.0.0", "") else first["bind"]
            svc["url"] = "http://%s:%d" % (host, first["host"])
        else:
            svc["url"] = ""

    order = topological_order(model["services"])
    model["start_order"] = order
    model["stop_order"] = list(reversed(order))
    model["containers"] = {n: model["services"][n]["container_name"] for n in SERVICES}
    model["api_url"] = model["services"]["api"]["url"]
    model["frontend_url"] = model["services"]["frontend"]["url"]
    pg_ports = model["services"]["postgres"]["ports"]
    model["db_host"] = ("127.0.0.1" if pg_ports[0]["bind"] == "0.0.0.0" else pg_ports[0]["bind"]) if pg_ports else ""
    model["db_port"] = pg_ports[0]["host"] if pg_ports else 0
    return model


def service_env(model, service, secret_dir):
    """Environment of one service container.

    Returns ``(env, mounts, secret_vars)``. In "file" mode ``env`` holds
    ``<VAR>_FILE`` paths and ``mounts`` the read-only secret files; in "env"
    mode ``secret_vars`` maps each variable to the secret key the caller fills
    from the vault. The model itself never holds a secret value.
    """
    svc = model["services"][service]
    env = {}
    peers = model.get("peers") or {}
    if service == "api":
        db_host, db_port = "postgres", "5432"
        if peers.get("postgres"):
            db_host, db_port = peers["postgres"].rsplit(":", 1)
        env.update(
            {
                "POSTGRES_HOST": db_host,
                "POSTGRES_PORT": db_port,
                "POSTGRES_DB": model["db_name"],
                "POSTGRES_USER": model["db_user"],
            }
        )
    elif service == "postgres":
        env.update({"POSTGRES_DB": model["db_name"], "POSTGRES_USER": model["db_user"]})
    elif service == "frontend":
        api_ports = model["services"]["api"]["ports"]
        if peers.get("api"):
            # Several APIs: the frontend balances over them (images/frontend: upstream group,
            # passive health checks, idempotent requests retried on the next API).
            env["NER11_API_UPSTREAM"] = ",".join(peers["api"])
        else:
            env["NER11_API_UPSTREAM"] = "api:%d" % (api_ports[0]["container"] if api_ports else 8000)
    env.update(svc["env"])
    mounts = []
    secret_vars = {}
    for var, key in sorted(svc["secrets"].items()):
        if model["secrets_mode"] == "file":
            env["%s_FILE" % var] = "/run/secrets/%s" % key
            mounts.append(
                {"source": "%s/%s" % (secret_dir, key), "target": "/run/secrets/%s" % key, "type": "bind", "read_only": True}
            )
        else:
            secret_vars[var] = key
    return env, mounts, secret_vars


def container_spec(model, service):
    """The community.docker.docker_container options of one service."""
    svc = model["services"][service]
    secret_dir = "%s/secrets" % model["config_dir"]
    env, secret_mounts, secret_vars = service_env(model, service, secret_dir)
    mounts = [dict(m) for m in svc["volumes"]] + secret_mounts
    health = None
    if svc["healthcheck"]:
        health = dict(svc["healthcheck"])
    return {
        "service": service,
        "name": svc["container_name"],
        "image": svc["image"],
        "env": env,
        "secret_vars": secret_vars,
        "mounts": mounts,
        "published_ports": [p["spec"] for p in svc["ports"]],
        "networks": [{"name": model["network"], "aliases": [service]}],
        "healthcheck": health,
        "stop_timeout": svc["stop_timeout"],
        "start_timeout": svc["start_timeout"],
        "restart_policy": svc["restart_policy"],
        "memory": svc["memory"] or None,
        "shm_size": svc["shm_size"] or None,
        "log_driver": svc["logging"]["driver"],
        "log_options": log_options(svc["logging"]),
        "labels": svc["labels"],
        "depends_on": svc["depends_on"],
        "url": svc["url"],
        "health_path": svc["health_path"],
    }

# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Discovery of the containers of a NER11 stack (DESIGN section 3, G1).

One step finds, per service, the container that actually runs it, from the output of
``docker inspect`` (a list of container documents):

1. an explicit ``container_name`` set in ``ner11_stack`` (the operator named it);
2. the collection's labels ``io.ner11.project`` / ``io.ner11.service`` (managed containers);
3. docker-compose labels ``com.docker.compose.project`` / ``com.docker.compose.service``
   (compose v1 and v2 set the same labels; one-off ``run`` containers are ignored);
4. the collection's derived name ``<project>-<service>-1``.

The result is the only source of container names downstream. A container found that does
not carry the collection's labels for this project is *adopted*: it is never recreated,
and its data volumes are never swapped implicitly. ``drift()`` compares the model with what
runs (image, env, ports, volumes, healthcheck, limits) without exposing secret values.

Plain Python: no Ansible import, unit-tested in tests/unit on real ``docker inspect`` JSON.
"""

from __future__ import annotations

import copy
import re

SERVICES = ("postgres", "api", "frontend")

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_ONEOFF = "com.docker.compose.oneoff"
COMPOSE_NUMBER = "com.docker.compose.container-number"
COMPOSE_VERSION = "com.docker.compose.version"
NER11_PROJECT = "io.ner11.project"
NER11_SERVICE = "io.ner11.service"

# Environment variables whose values never leave discovery (only "set"/"unset").
_SECRET_RE = re.compile(r"(PASSWORD|SECRET|TOKEN|KEY|CREDENTIAL)", re.IGNORECASE)
_DURATION_RE = re.compile(r"^([0-9]+)(ms|s|m|h)$")
_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)b?$", re.IGNORECASE)


class DiscoveryError(ValueError):
    """The engine's answer is ambiguous in a way the operator must resolve; the message says how."""


def name_of(container):
    return (container.get("Name") or "").lstrip("/")


def labels_of(container):
    return (container.get("Config") or {}).get("Labels") or {}


def _compose_rank(container):
    """Prefer a running container, then compose's container number 1."""
    labels = labels_of(container)
    try:
        number = int(labels.get(COMPOSE_NUMBER, "1"))
    except ValueError:
        number = 99
    running = bool((container.get("State") or {}).get("Running"))
    return (0 if running else 1, number, name_of(container))


def find_service(containers, project, service, explicit_name="", default_name=""):
    """Return ``(container, origin)`` for one service, or ``(None, "")``.

    ``origin`` is ``name`` (explicit name), ``collection`` (our labels), ``compose``
    (compose labels) or ``default_name``.
    """
    by_name = {name_of(c): c for c in containers}
    if explicit_name and explicit_name in by_name:
        return by_name[explicit_name], "name"
    ours = [c for c in containers if labels_of(c).get(NER11_PROJECT) == project and labels_of(c).get(NER11_SERVICE) == service]
    if len(ours) > 1:
        raise DiscoveryError(
            "%d containers carry the labels io.ner11.project=%s io.ner11.service=%s (%s); remove all but one"
            % (len(ours), project, service, ", ".join(sorted(name_of(c) for c in ours)))
        )
    if ours:
        return ours[0], "collection"
    compose = [
        c
        for c in containers
        if labels_of(c).get(COMPOSE_PROJECT) == project
        and labels_of(c).get(COMPOSE_SERVICE) == service
        and str(labels_of(c).get(COMPOSE_ONEOFF, "False")).lower() != "true"
    ]
    if compose:
        return sorted(compose, key=_compose_rank)[0], "compose"
    if default_name and default_name in by_name:
        return by_name[default_name], "default_name"
    return None, ""


def _mounts(container):
    out = []
    for mount in container.get("Mounts") or []:
        kind = mount.get("Type") or ("volume" if mount.get("Name") else "bind")
        out.append(
            {
                "type": kind,
                "source": mount.get("Name") if kind == "volume" else mount.get("Source"),
                "target": mount.get("Destination"),
                "read_only": not mount.get("RW", True),
            }
        )
    return sorted(out, key=lambda m: m["target"] or "")


def _ports(container):
    out = []
    bindings = (container.get("HostConfig") or {}).get("PortBindings") or {}
    for key, binds in bindings.items():
        port, _sep, proto = key.partition("/")
        for bind in binds or []:
            if not bind.get("HostPort"):
                continue
            out.append(
                {
                    "bind": bind.get("HostIp") or "0.0.0.0",
                    "host": int(bind["HostPort"]),
                    "container": int(port),
                    "protocol": proto or "tcp",
                    "spec": "%s:%s:%s" % (bind.get("HostIp") or "0.0.0.0", bind["HostPort"], port),
                }
            )
    return sorted(out, key=lambda p: (p["host"], p["bind"]))


def _env(container):
    env = {}
    for item in (container.get("Config") or {}).get("Env") or []:
        key, _sep, value = item.partition("=")
        env[key] = value
    return env


def describe(container, project, origin):
    """The facts downstream roles use about one found container (no secret values)."""
    state = container.get("State") or {}
    labels = labels_of(container)
    config = container.get("Config") or {}
    host = container.get("HostConfig") or {}
    managed = labels.get(NER11_PROJECT) == project
    mounts = _mounts(container)
    compose = {}
    if labels.get(COMPOSE_PROJECT):
        compose = {
            "project": labels.get(COMPOSE_PROJECT),
            "service": labels.get(COMPOSE_SERVICE, ""),
            "version": labels.get(COMPOSE_VERSION, ""),
            "config_files": labels.get("com.docker.compose.project.config_files", ""),
        }
    health = (state.get("Health") or {}).get("Status") or "none"
    return {
        "found": True,
        "name": name_of(container),
        "id": container.get("Id", ""),
        "image": config.get("Image", ""),
        "image_id": container.get("Image", ""),
        "state": state.get("Status", "unknown"),
        "running": bool(state.get("Running")),
        "health": health,
        "origin": origin,
        "managed": managed,
        "adopted": not managed,
        "compose": compose,
        "mounts": mounts,
        "volumes": [m["source"] for m in mounts if m["type"] == "volume"],
        "ports": _ports(container),
        "networks": sorted((container.get("NetworkSettings") or {}).get("Networks") or {}),
        "env_keys": sorted(_env(container)),
        "memory": host.get("Memory") or 0,
        "shm_size": host.get("ShmSize") or 0,
        "log": _log_config(container),
        "stop_timeout": config.get("StopTimeout"),
    }


def missing(name):
    """The entry of a service whose container does not exist (yet)."""
    return {
        "found": False,
        "name": name,
        "id": "",
        "image": "",
        "image_id": "",
        "state": "missing",
        "running": False,
        "health": "none",
        "origin": "",
        "managed": False,
        "adopted": False,
        "compose": {},
        "mounts": [],
        "volumes": [],
        "ports": [],
        "networks": [],
        "env_keys": [],
        "memory": 0,
        "shm_size": 0,
        "log": {"driver": "", "options": {}},
        "stop_timeout": None,
    }


def duration_ns(value):
    match = _DURATION_RE.match(str(value or ""))
    if not match:
        return 0
    scale = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}[match.group(2)]
    return int(match.group(1)) * scale


def size_bytes(value):
    """'512m' -> bytes; '' / None / 0 -> 0 (no limit)."""
    if value in (None, "", 0, "0"):
        return 0
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value).strip())
    if not match:
        return 0
    scale = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def _show_env(key, value):
    if value is None:
        return "(unset)"
    if _SECRET_RE.search(key) and not key.endswith("_FILE"):
        return "(set)"
    return value


def _log_config(container):
    log = (container.get("HostConfig") or {}).get("LogConfig") or {}
    return {"driver": log.get("Type") or "", "options": dict(log.get("Config") or {})}


def drift(spec, container):
    """Differences between a service's desired container (``container_spec``) and what runs.

    Returns a list of ``{"field", "model", "actual"}``; values of secret variables are
    shown as ``(set)``/``(unset)`` only. Bind mounts of the collection's secret files are
    not compared (a compose stack passes its secrets differently by design).
    """
    out = []
    config = container.get("Config") or {}
    host = container.get("HostConfig") or {}
    if spec.get("image") and config.get("Image") != spec["image"]:
        out.append({"field": "image", "model": spec["image"], "actual": config.get("Image", "")})

    env = _env(container)
    for key, value in sorted((spec.get("env") or {}).items()):
        if env.get(key) != value:
            out.append({"field": "env.%s" % key, "model": _show_env(key, value), "actual": _show_env(key, env.get(key))})

    want_ports = sorted(spec.get("published_ports") or [])
    have_ports = sorted(p["spec"] for p in _ports(container))
    if want_ports != have_ports:
        out.append({"field": "ports", "model": want_ports, "actual": have_ports})

    secret_targets = {m["target"] for m in spec.get("mounts") or [] if str(m.get("target", "")).startswith("/run/secrets/")}
    want_mounts = sorted(
        "%s:%s" % (m["source"], m["target"]) for m in spec.get("mounts") or [] if m["target"] not in secret_targets
    )
    have_mounts = sorted("%s:%s" % (m["source"], m["target"]) for m in _mounts(container) if m["target"] not in secret_targets)
    if want_mounts != have_mounts:
        out.append({"field": "volumes", "model": want_mounts, "actual": have_mounts})

    want_health = spec.get("healthcheck") or {}
    have_health = config.get("Healthcheck") or {}
    if want_health:
        want = {
            "test": list(want_health.get("test") or []),
            "interval": duration_ns(want_health.get("interval")),
            "timeout": duration_ns(want_health.get("timeout")),
            "retries": int(want_health.get("retries") or 0),
            "start_period": duration_ns(want_health.get("start_period")),
        }
        have = {
            "test": list(have_health.get("Test") or []),
            "interval": have_health.get("Interval") or 0,
            "timeout": have_health.get("Timeout") or 0,
            "retries": have_health.get("Retries") or 0,
            "start_period": have_health.get("StartPeriod") or 0,
        }
        for key in ("test", "interval", "timeout", "retries", "start_period"):
            if want[key] and want[key] != have[key]:
                out.append({"field": "healthcheck.%s" % key, "model": want[key], "actual": have[key]})

    want_mem = size_bytes(spec.get("memory"))
    if want_mem != (host.get("Memory") or 0):
        out.append({"field": "limits.memory", "model": want_mem, "actual": host.get("Memory") or 0})
    if spec.get("shm_size"):
        want_shm = size_bytes(spec.get("shm_size"))
        if want_shm != (host.get("ShmSize") or 0):
            out.append({"field": "limits.shm_size", "model": want_shm, "actual": host.get("ShmSize") or 0})
    if spec.get("log_driver"):
        # Log limits (json-file max-size/max-file): reported, never changed, on an adopted container.
        have_log = _log_config(container)
        if have_log["driver"] and have_log["driver"] != spec["log_driver"]:
            out.append({"field": "log.driver", "model": spec["log_driver"], "actual": have_log["driver"]})
        for key, value in sorted((spec.get("log_options") or {}).items()):
            if str(have_log["options"].get(key, "")) != str(value):
                out.append({"field": "log.%s" % key, "model": value, "actual": have_log["options"].get(key, "(unset)")})
    if spec.get("stop_timeout") and config.get("StopTimeout") not in (None, spec["stop_timeout"]):
        out.append({"field": "stop_timeout", "model": spec["stop_timeout"], "actual": config.get("StopTimeout")})
    return out


def keep_volumes(spec, container):
    """A copy of ``spec`` whose volume mounts use the volumes the container has now.

    A data volume is never swapped implicitly: for every target where the model names a
    different volume than the one mounted, the mounted one is kept. Returns ``(spec, kept)``
    where ``kept`` lists ``{"target", "model", "actual"}``.
    """
    spec = copy.deepcopy(spec)
    current = {m["target"]: m for m in _mounts(container) if m["type"] == "volume"}
    kept = []
    for mount in spec.get("mounts") or []:
        have = current.get(mount["target"])
        if mount.get("type", "volume") == "volume" and have and have["source"] != mount["source"]:
            kept.append({"target": mount["target"], "model": mount["source"], "actual": have["source"]})
            mount["source"] = have["source"]
    # Volumes the running container has but the model does not name (an anonymous or extra
    # volume, e.g. the image's VOLUME) are kept as they are too.
    targets = {m["target"] for m in spec.get("mounts") or []}
    for target, have in sorted(current.items()):
        if target not in targets:
            spec.setdefault("mounts", []).append(
                {"source": have["source"], "target": target, "type": "volume", "read_only": have["read_only"]}
            )
            kept.append({"target": target, "model": "", "actual": have["source"]})
    return spec, kept


def port_owners(containers, wanted, own_ids):
    """``[port, name]`` of running containers outside the stack that publish a wanted host port."""
    wanted = {int(p) for p in wanted}
    owners = set()
    for container in containers:
        if container.get("Id") in own_ids or not (container.get("State") or {}).get("Running"):
            continue
        for port in _ports(container):
            if port["host"] in wanted:
                owners.add((port["host"], name_of(container)))
    return [[str(port), name] for port, name in sorted(owners)]


def discover(containers, model, explicit_names=None, services=None, specs=None):
    """Discover the stack described by a complete ``model`` (``stack_model.normalize``).

    ``containers``: ``docker inspect`` documents of every container of the engine.
    ``explicit_names``: service -> container name the operator set in ``ner11_stack``.
    ``services``: the services this host runs (default all). ``specs``: service ->
    ``container_spec`` (for drift); drift is computed for every found container.
    """
    explicit_names = explicit_names or {}
    services = [s for s in SERVICES if s in (services or SERVICES)]
    specs = specs or {}
    project = model["project"]
    found = {}
    own_ids = set()
    for service in SERVICES:
        default_name = model["services"][service]["container_name"]
        container, origin = find_service(containers, project, service, explicit_names.get(service, ""), default_name)
        if container is None:
            entry = missing(default_name)
            entry["drift"] = []
            entry["kept_volumes"] = []
            entry["desired"] = specs.get(service)
        else:
            entry = describe(container, project, origin)
            own_ids.add(container.get("Id"))
            spec = specs.get(service)
            entry["drift"] = drift(spec, container) if spec else []
            if spec:
                entry["desired"], entry["kept_volumes"] = keep_volumes(spec, container)
            else:
                entry["desired"], entry["kept_volumes"] = None, []
        found[service] = entry

    wanted = [p["host"] for s in services for p in model["services"][s]["ports"]]
    selected = {s: found[s] for s in services}
    networks = [n for s in services for n in found[s]["networks"]]
    return {
        "project": project,
        "services": found,
        "selected": services,
        "containers": {s: found[s]["name"] for s in SERVICES},
        "ids": {s: found[s]["id"] for s in SERVICES},
        "adopted": [s for s in services if selected[s]["found"] and selected[s]["adopted"]],
        "managed": [s for s in services if selected[s]["found"] and selected[s]["managed"]],
        "missing": [s for s in services if not selected[s]["found"]],
        "running": [s for s in services if selected[s]["running"]],
        "drifted": [s for s in services if selected[s]["drift"]],
        "network": networks[0] if networks else model["network"],
        "volumes": sorted({v for s in services for v in found[s]["volumes"]}),
        "port_conflicts": port_owners(containers, wanted, own_ids),
    }


def explicit_names_of(stack):
    """service -> container_name the operator set in the raw ``ner11_stack`` overrides."""
    out = {}
    for service, svc in ((stack or {}).get("services") or {}).items():
        if isinstance(svc, dict) and svc.get("container_name"):
            out[service] = str(svc["container_name"])
    return out


def drift_text(found):
    """One line per drifted field, for a report an operator reads."""
    lines = []
    for service in found.get("selected") or SERVICES:
        entry = found["services"][service]
        for item in entry.get("drift") or []:
            lines.append(
                "%s (%s) %s: model %s, running %s" % (service, entry["name"], item["field"], item["model"], item["actual"])
            )
    return lines

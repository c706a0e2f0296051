# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``ner_health`` with ``stack``: discover the stack's containers in the same module run.

The health and startup roles used to run ``stack_info`` (one module run) and then
``ner_health`` (a second one) with the container names and URLs filled in by Jinja. With
``stack`` given, ``ner_health`` completes the stack model (``stack_model.normalize``),
reads the engine over its socket (``docker_socket.Engine``, only the containers that can
belong to the stack are inspected), finds each service's container with the same rules as
``stack_info`` (``discovery.discover``) and fills every target option the caller left
unset from the model and the services this host runs. The container checks read the
same Engine API documents (no ``docker inspect`` process per attempt).

Plain Python: the engine is injected (anything with ``get(path)``), unit-tested without Docker.
"""

from __future__ import annotations

from urllib.parse import quote

from ansible_collections.ner11.ops.plugins.module_utils.discovery import (
    COMPOSE_PROJECT,
    NER11_PROJECT,
    SERVICES,
    discover,
    explicit_names_of,
)
from ansible_collections.ner11.ops.plugins.module_utils.stack_model import normalize

# The components of the health checks per service this host runs.
SERVICE_COMPONENTS = {"postgres": ("db", "container"), "api": ("api", "container"), "frontend": ("frontend", "container")}


def stack_documents(engine, model, explicit_names):
    """``docker inspect`` documents of the containers that can belong to the stack.

    The list endpoint gives every container's names and labels; only those carrying the
    project's labels (collection or compose) or one of the stack's container names are
    inspected - not every container of a shared engine.
    """
    project = model["project"]
    names = set(explicit_names.values()) | {model["services"][s]["container_name"] for s in SERVICES}
    docs = []
    for summary in engine.get("/containers/json?all=1") or []:
        labels = summary.get("Labels") or {}
        own = {n.lstrip("/") for n in summary.get("Names") or []}
        if labels.get(NER11_PROJECT) == project or labels.get(COMPOSE_PROJECT) == project or own & names:
            doc = engine.get("/containers/%s/json" % quote(summary["Id"]))
            if doc is not None:
                docs.append(doc)
    return docs


def discover_stack(engine, stack, services):
    """``(model, found)``: the completed model and the discovery of the selected services.

    ``found`` has the shape of ``stack_info``'s result (without drift, desired specs and
    port conflicts, which only deploy and adopt need) plus ``docker_root_dir``.
    """
    model = normalize(stack or {})
    explicit = explicit_names_of(stack)
    docs = stack_documents(engine, model, explicit)
    found = discover(docs, model, explicit_names=explicit, services=services)
    found.pop("port_conflicts", None)
    for entry in found["services"].values():
        for key in ("drift", "kept_volumes", "desired"):
            entry.pop(key, None)
    found["drifted"] = []
    info = engine.get("/info") or {}
    found["docker_root_dir"] = info.get("DockerRootDir") or ""
    return model, found


def fill_targets(params, model, found, services, docker_root_disk=False):
    """A copy of the module's ``params`` with every unset target filled from the stack.

    api_url / frontend_url when this host runs the api / frontend, the postgres container
    when it runs postgres, the containers of its
    services, db_name, canary_tables, the model's db_user as login_user unless another
    user is named, and the engine's data root among the disks with ``docker_root_disk``.
    Explicit options win. ``checks`` unset: the components of the host's services plus
    disk and memory.
    """
    p = dict(params)
    if not p.get("api_url") and "api" in services:
        p["api_url"] = model["api_url"]
    if not p.get("frontend_url") and "frontend" in services:
        p["frontend_url"] = model["frontend_url"]
    if not p.get("container") and not p.get("login_host") and "postgres" in services:
        # Also when it does not exist: the db checks then say so next to container:<name>.
        p["container"] = found["containers"]["postgres"]
    if not p.get("containers"):
        p["containers"] = [found["containers"][s] for s in services]
    if p.get("db_name") in (None, "", "ner11_db"):
        p["db_name"] = model["db_name"]
    if p.get("canary_tables") is None:
        p["canary_tables"] = list(model["canary_tables"])
    if p.get("login_user") in (None, "", "postgres"):
        p["login_user"] = model["db_user"]
    disks = list(p.get("disks") or ["/"])
    if docker_root_disk and found.get("docker_root_dir") and found["docker_root_dir"] not in disks:
        disks.append(found["docker_root_dir"])
    p["disks"] = disks
    if not p.get("checks"):
        wanted = {c for s in services for c in SERVICE_COMPONENTS[s]} | {"disk", "memory"}
        if not p.get("container") and not p.get("login_host"):
            wanted.discard("db")
        p["checks"] = [c for c in ("api", "db", "frontend", "container", "disk", "memory") if c in wanted]
    return p


def engine_inspect(engine):
    """An ``inspect(names) -> (rc, {name: document}, stderr)`` over the Engine API (missing: absent)."""

    def inspect(names):
        out = {}
        try:
            for name in names:
                doc = engine.get("/containers/%s/json" % quote(name))
                if doc is not None:
                    out[name] = doc
        except Exception as exc:  # the engine stopped answering: the container checks report it
            return 1, out, str(exc)
        return 0, out, ""

    return inspect


def summary(model, found, services):
    """What the roles need from the discovery: common_discovered's shape (model, services, found)
    plus ``order`` (this host's services in the model's start order) and ``to_start`` (those not
    running), so no role recomputes them in Jinja."""
    order = [s for s in model["start_order"] if s in services]
    return {
        "model": model,
        "services": list(services),
        "found": found,
        "order": order,
        "to_start": [s for s in order if s not in found["running"]],
    }


def host_is_done(status, discovered):
    """Whether a check is its host's whole run (``ner_health``'s ``final``, which ``ledger.only_if_final``
    and the startup role read): the check did not fail and, when it discovered the stack, every
    container of this host exists and runs (nothing to start). startup.yml's pre-flight on such a
    host is the startup's last word."""
    if status == "fail":
        return False
    if discovered is None:
        return True
    return not discovered["to_start"] and not discovered["found"]["missing"]

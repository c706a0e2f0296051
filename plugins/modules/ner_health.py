#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: ner_health
short_description: Aggregated health of a NER11 stack, with an optional wait
version_added: 1.0.0
description:
  - Checks the API, the database, the frontend, the containers, the disks and the memory of a NER11 stack
    and returns one result per check, named C(component:measurement), in the shape of the IETF
    api-health-check draft (status, observed value and unit, latency, one-line output, time).
  - "API: C(api:http) (C(/health) C(status) must be exactly C(healthy); C(degraded) warns; G37, G4),
    C(api:model) (C(/api/v1/models/status) C(models_loaded) is true), C(api:db) (C(/api/v1/db/health)
    C(database) is exactly C(connected)), C(api:modules) (the module health paths; 404 means the module is
    not loaded, 500 a server error, a timeout an overloaded API), C(api:latency) (C(/api/v1/vendor-equipment/)
    against O(latency_warn_ms))."
  - "Database (with O(container) or O(login_host)): C(db:connect) and C(db:query) (an authenticated
    C(SELECT 1), server version, recovery state; C(pg_isready) is not enough), C(db:pool) (client connections
    relative to C(max_connections), G71), C(db:canary) (the canary tables exist; their row counts)."
  - "C(frontend:http): the page title, C(<div id=\"root\">), the JS bundle the page references (200 with a
    JavaScript content type) and the proxied C(/api/v1/health)."
  - "C(container:<name>): running, Docker health, restart count, OOM kill (C(docker inspect)).
    C(disk:<mount>): used percent and free space (G13). C(memory): C(MemAvailable) of the host."
  - Checks run concurrently, each with its own deadline (O(check_timeout)), so a frozen component fails fast
    instead of hanging the run. With O(wait_for) the module polls until the stack reaches that status or
    O(timeout) passes - no fixed sleeps (G7).
  - The module only reads. It runs the same checks in check mode and never reports a change.
options:
  stack:
    description:
      - The C(ner11_stack) overrides (see docs/stack-model.md). When given, the module completes the stack model
        and finds the stack's containers itself, in the same run (the rules of M(ner11.ops.stack_info), over the
        engine's socket), and fills every option below that is not set from the model and the services of this
        host - O(api_url) and O(frontend_url) of the services it runs, O(container) (its PostgreSQL container when
        it runs postgres), O(containers), O(db_name), O(canary_tables), O(login_user) (the model's
        C(db_user) unless another user is named) - and, when O(checks) is not set, checks the components of its
        services plus C(disk) and C(memory). The container checks then read the engine's API, not C(docker inspect).
      - The discovery is returned in RV(discovered).
    type: dict
  services:
    description:
      - With O(stack), the services this host runs. Default - from O(groups) (C(ner11_db) -> C(postgres),
        C(ner11_api) -> C(api), C(ner11_frontend) -> C(frontend)); all three for a host in none of them.
    type: list
    elements: str
    choices: [postgres, api, frontend]
  groups:
    description: With O(stack), the groups of this host (C(group_names)); they pick the services when O(services) is not set.
    type: list
    elements: str
    default: []
  docker_root_disk:
    description: With O(stack), also check the disk of the engine's data root (C(DockerRootDir)).
    type: bool
    default: false
  docker_host:
    description:
      - With O(stack), the engine to read, V(unix:///var/run/docker.sock) or V(tcp://host:port) (no TLS).
        Defaults to the E(DOCKER_HOST) environment variable, else V(unix:///var/run/docker.sock).
    type: str
  api_url:
    description: Base URL of the NER API, for example V(http://127.0.0.1:18000). Enables the C(api) checks.
    type: str
  frontend_url:
    description: Base URL of the frontend, for example V(http://127.0.0.1:13000). Enables the C(frontend) check.
    type: str
  db_name:
    description: Database the C(db) checks connect to (with O(stack), the model's when this is the default).
    type: str
    default: ner11_db
  containers:
    description: Names of the containers to inspect (one C(container:<name>) check each).
    type: list
    elements: str
    default: []
  disks:
    description: Mount points (or any path on them) to check (one C(disk:<path>) check each).
    type: list
    elements: str
    default: ['/']
  checks:
    description:
      - Components to check. Default is every component whose input is given.
      - Naming a component whose input is missing (for example C(db) without O(container) or O(login_host))
        is an error.
    type: list
    elements: str
    choices: [api, db, frontend, container, disk, memory]
  modules:
    description: Module path names of the API whose C(/api/v1/<name>/health) C(api:modules) checks.
    type: list
    elements: str
    default: [vendor-equipment, threat-intelligence, compliance, economic-impact, demographics, prioritization]
  canary_tables:
    description:
      - Tables that must exist in O(db_name); their row counts are reported by C(db:canary).
      - Default - the stack model's with O(stack), else V(vendor_equipment), V(threat_intelligence),
        V(compliance_frameworks).
    type: list
    elements: str
  disk_warn_percent:
    description: C(disk:*) warns at this used percentage or more.
    type: float
    default: 80
  disk_fail_percent:
    description: C(disk:*) fails at this used percentage or more.
    type: float
    default: 90
  disk_min_free_gb:
    description: C(disk:*) fails when less than this many GiB are free (the runbooks' 5 GB floor).
    type: float
    default: 5
  memory_min_available_gb:
    description: C(memory) warns when less than this many GiB are available (the runbooks' 4 GB startup gate).
    type: float
    default: 4
  pool_warn_percent:
    description: C(db:pool) warns above this percentage of C(max_connections).
    type: float
    default: 80
  pool_fail_percent:
    description: C(db:pool) fails at this percentage of C(max_connections) or more.
    type: float
    default: 95
  latency_warn_ms:
    description: C(api:latency) warns when the vendor listing takes this many milliseconds or more.
    type: float
    default: 200
  latency_samples:
    description:
      - Consecutive requests of the vendor listing that C(api:latency) makes; it judges their median, so one
        slow request does not flip the status. All of them must end within O(check_timeout).
    type: int
    default: 3
  check_timeout:
    description: Seconds each check may take; a check that does not finish in time fails.
    type: float
    default: 5
  wait_for:
    description:
      - V(none) checks once. V(pass) polls until every check passes, V(warn) until no check fails,
        or until O(timeout); the last result is returned either way.
    type: str
    choices: [none, pass, warn]
    default: none
  timeout:
    description: Overall deadline in seconds when O(wait_for) is not V(none).
    type: float
    default: 120
  interval:
    description: Seconds between two attempts when waiting.
    type: float
    default: 2
  fail_on:
    description:
      - When the module fails. V(fail) when the overall status is C(fail), V(warn) when it is C(warn) or C(fail),
        V(never) to only report (the result is returned in every case).
    type: str
    choices: [fail, warn, never]
    default: fail
  ledger:
    description:
      - Also append the line of this run to the run ledger, as M(ner11.ops.run_ledger) writes it (redacted, one locked
        write, fsync; the file 0600 in a 0700 directory), so a playbook whose work per host is this one check needs no
        ledger task after it (C(playbooks/health.yml)).
      - The line's status is C(failed) when this module fails the host (O(fail_on), or no check could run), else
        C(ok); its results are the health status and the failed checks (or the error). Nothing is written in check
        mode; RV(ledger) shows the line.
    type: dict
    suboptions:
      playbook:
        description: The playbook's name, such as V(health).
        type: str
        required: true
      host:
        description: The host the line is recorded for (C(inventory_hostname)).
        type: str
        required: true
      path:
        description:
          - Absolute path of the ledger file. Default - C(ledger.jsonl) in the C(config_dir) of the stack model (O(stack)).
        type: path
      started_at:
        description: When the run began (seconds since the epoch). Default - when this module began.
        type: float
      awx_job_id:
        description:
          - The AWX job id, recorded in the line.
          - Default - the play's C(awx_job_id), else its C(tower_job_id) (set by AWX), taken by the action plugin.
        type: str
      secret_values:
        description:
          - Values removed from the line wherever they appear.
          - The action plugin always adds the play's C(ner11_db_password) when it is set.
        type: list
        elements: str
        default: []
      only_if_final:
        description:
          - Write the line only when this check is the host's whole run (RV(final)) - the check does not fail and, with
            O(stack), every container of the services this host runs exists and runs (nothing to start). Otherwise nothing is
            written and RV(ledger) is not returned; the playbook records the run when it ends (the pre-flight of
            C(playbooks/startup.yml), whose gated starts record a host that had something to start).
          - A failure of the module itself writes no line then either.
        type: bool
        default: false
extends_documentation_fragment:
  - ner11.ops.attributes
  - ner11.ops.attributes.ACTIONGROUP_OPS
  - ner11.ops.postgres
attributes:
  check_mode:
    support: full
    details: Read-only; check mode runs the same checks and writes no ledger line.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - Never changes the stack; C(changed) is always false. With O(ledger) each run appends its own line to the run
        ledger, an audit record of the run and not state the module manages (as M(ner11.ops.run_ledger)).
notes:
  - The database options (O(container), O(login_host), ...) are optional here; the C(db) checks run when one
    of O(container) or O(login_host) is set.
  - C(docker) and C(psql) commands are bounded with coreutils C(timeout) when it exists on the target.
seealso:
  - name: IETF Health Check Response Format for HTTP APIs
    description: The shape of each check result.
    link: https://datatracker.ietf.org/doc/html/draft-inadarei-api-health-check
author:
  - ner11.ops maintainers (@ner11-ops)
"""

EXAMPLES = r"""
- name: Check the whole local stack
  ner11.ops.ner_health:
    api_url: http://127.0.0.1:18000
    frontend_url: http://127.0.0.1:13000
    container: ner11-postgres-1
    containers: [ner11-postgres-1, ner11-api-1, ner11-frontend-1]
    disks: [/, /var/lib/docker]
  register: health

- name: Check what this host runs of the stack (discovers its containers in the same run)
  ner11.ops.ner_health:
    stack: "{{ ner11_stack | default({}) }}"
    groups: "{{ group_names }}"
  register: health

- name: Wait (up to 90 s) until the API passes after a restart
  ner11.ops.ner_health:
    api_url: http://127.0.0.1:18000
    checks: [api]
    wait_for: pass
    timeout: 90

- name: Check this host and record the run in the ledger (one task per host)
  ner11.ops.ner_health:
    stack: "{{ ner11_stack | default({}) }}"
    groups: "{{ group_names }}"
    ledger:
      playbook: health
      host: "{{ inventory_hostname }}"
  register: health

- name: Report only, never fail
  ner11.ops.ner_health:
    api_url: http://127.0.0.1:18000
    fail_on: never
  register: health

- name: Show what fails
  ansible.builtin.debug:
    msg: "{{ health.failed_checks }}"
"""

RETURN = r"""
status:
  description: Overall status, the worst of all checks.
  returned: always
  type: str
  sample: pass
checks:
  description: One entry per check, keyed C(component:measurement) (C(memory) for the host memory).
  returned: always
  type: dict
  sample:
    api:http:
      status: pass
      component: api
      measurement: http
      observed_value: healthy
      observed_unit: null
      latency_ms: 3.1
      output: healthy (version 1.0.0, uptime_seconds 120.5)
      time: "2025-01-01T10:00:00.000Z"
    db:pool:
      status: warn
      component: db
      measurement: pool
      observed_value: 87.0
      observed_unit: percent
      latency_ms: 95.2
      output: "87/100 connections (87%): active 1, idle 86 > 80%: terminate idle sessions (pg_sessions) or raise max_connections"
      time: "2025-01-01T10:00:00.000Z"
summary:
  description: Number of checks per status.
  returned: always
  type: dict
  sample: {pass: 14, warn: 1, fail: 0}
failed_checks:
  description: Names of the checks whose status is C(fail).
  returned: always
  type: list
  elements: str
  sample: [api:http, container:ner11-api-1]
attempts:
  description: Number of attempts (more than one only with O(wait_for)).
  returned: always
  type: int
  sample: 1
duration_ms:
  description: Wall time of the whole run, waiting included, in milliseconds.
  returned: always
  type: float
  sample: 180.4
started_epoch:
  description: When the module began (discovery included), in seconds since the epoch; a role measures its total time from it.
  returned: always
  type: float
  sample: 1764778800.123
report:
  description: The health table an operator reads, one line per check and a summary line.
  returned: always
  type: list
  elements: str
final:
  description:
    - Whether this check is its host's whole run - the check did not fail (nor fail the task by O(fail_on)) and,
      with O(stack), every container of the host's services exists and runs (nothing to start). The startup
      role's pre-flight reads it to end a done host's run; O(ledger.only_if_final) writes the line only then.
  returned: when the check ran (not on invalid options or a stack that could not be discovered)
  type: bool
  sample: true
discovered:
  description:
    - With O(stack) - C(model) (the completed stack model), C(services) (the services of this host) and C(found)
      (the discovery in the shape of M(ner11.ops.stack_info)'s result, without drift and port conflicts, with
      C(docker_root_dir)).
  returned: when O(stack) is given
  type: dict
ledger:
  description:
    - With O(ledger) - C(line) (the redacted record), C(path) (the ledger file) and C(bytes) (what was appended;
      0 in check mode, when nothing is written). The P(ner11.ops.ledger_summary#filter) filter reads it as it reads
      M(ner11.ops.run_ledger)'s result.
  returned: >-
    when O(ledger) is given and its line could be built (with O(ledger.only_if_final), only when the check is the
    host's whole run)
  type: dict
  sample:
    line: {schema: 1, playbook: health, host: node1, status: ok, results: {health: pass, failed_checks: []}}
    path: /var/lib/ner11/ner11/ledger.jsonl
    bytes: 312
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.health import (
    COMPONENTS,
    DEFAULT_MODULES,
    FAIL_ON,
    WAIT_FOR,
    HealthChecker,
    HealthError,
    validate,
    wait_until,
)
from ansible_collections.ner11.ops.plugins.module_utils.discovery import DiscoveryError
from ansible_collections.ner11.ops.plugins.module_utils.docker_socket import Engine, EngineError
from ansible_collections.ner11.ops.plugins.module_utils.health_db import DEFAULT_CANARY_TABLES
from ansible_collections.ner11.ops.plugins.module_utils.health_http import (
    fetch,
    plain_http_get,
)
from ansible_collections.ner11.ops.plugins.module_utils.health_result import failure_message, report_lines, should_fail
from ansible_collections.ner11.ops.plugins.module_utils.health_stack import (
    discover_stack,
    engine_inspect,
    fill_targets,
    host_is_done,
    summary,
)
from ansible_collections.ner11.ops.plugins.module_utils.ledger import RUN_LINE_SUBOPTIONS, LedgerError, append, own_run_line
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import (
    POSTGRES_MUTUALLY_EXCLUSIVE,
    PgTarget,
    postgres_argument_spec,
)
from ansible_collections.ner11.ops.plugins.module_utils.runner import main_thread_failures
from ansible_collections.ner11.ops.plugins.module_utils.stack_model import StackModelError, host_services

USER_AGENT = "ner11.ops-ner_health"


def http_get(url, timeout):
    """GET ``url``; never raises (errors become HttpResponse.error).

    Plain http:// goes through the standard library (health_http.plain_http_get: no TLS
    context per request); https:// through ``open_url``, imported only then.
    """
    if url.lower().startswith("http://"):
        return plain_http_get(url, timeout, USER_AGENT)
    from ansible.module_utils.urls import open_url

    return fetch(url, lambda: open_url(url, method="GET", timeout=timeout, http_agent=USER_AGENT, follow_redirects="safe"))


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        stack=dict(type="dict"),
        services=dict(type="list", elements="str", choices=["postgres", "api", "frontend"]),
        groups=dict(type="list", elements="str", default=[]),
        docker_root_disk=dict(type="bool", default=False),
        docker_host=dict(type="str"),
        api_url=dict(type="str"),
        frontend_url=dict(type="str"),
        db_name=dict(type="str", default="ner11_db"),
        containers=dict(type="list", elements="str", default=[]),
        disks=dict(type="list", elements="str", default=["/"]),
        checks=dict(type="list", elements="str", choices=list(COMPONENTS)),
        modules=dict(type="list", elements="str", default=list(DEFAULT_MODULES)),
        canary_tables=dict(type="list", elements="str"),
        disk_warn_percent=dict(type="float", default=80),
        disk_fail_percent=dict(type="float", default=90),
        disk_min_free_gb=dict(type="float", default=5),
        memory_min_available_gb=dict(type="float", default=4),
        pool_warn_percent=dict(type="float", default=80),
        pool_fail_percent=dict(type="float", default=95),
        latency_warn_ms=dict(type="float", default=200),
        latency_samples=dict(type="int", default=3),
        check_timeout=dict(type="float", default=5),
        wait_for=dict(type="str", choices=list(WAIT_FOR), default="none"),
        timeout=dict(type="float", default=120),
        interval=dict(type="float", default=2),
        fail_on=dict(type="str", choices=list(FAIL_ON), default="fail"),
        ledger=dict(type="dict", options=dict(RUN_LINE_SUBOPTIONS, only_if_final=dict(type="bool", default=False))),
    )
    started_epoch = round(time.time(), 3)
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=POSTGRES_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    # The checks run commands in threads: a command that cannot start fails its check, not the module twice.
    main_thread_failures(module)
    params = module.params
    recorder = RunRecorder(module, params["ledger"], started_epoch)
    inspect = discovered = None
    if params["stack"] is not None:
        engine_host = params["docker_host"] or os.environ.get("DOCKER_HOST") or ""
        services = host_services(params["services"], params["groups"])
        try:
            engine = Engine(engine_host or None)
            model, found = discover_stack(engine, params["stack"], services)
        except StackModelError as exc:
            recorder.fail(msg="invalid ner11_stack: %s" % exc, changed=False)
        except DiscoveryError as exc:
            recorder.fail(msg=str(exc), changed=False)
        except (EngineError, ValueError) as exc:
            recorder.fail(
                msg="The Docker engine does not answer (%s). Start it (systemctl start docker), or check that this user "
                "may read its socket, and run this again." % exc,
                changed=False,
            )
        recorder.config_dir = model["config_dir"]
        params = fill_targets(params, model, found, services, params["docker_root_disk"])
        inspect = engine_inspect(engine)
        discovered = summary(model, found, services)
    elif params["canary_tables"] is None:
        params = dict(params, canary_tables=list(DEFAULT_CANARY_TABLES))
    try:
        params = validate(params)
    except HealthError as exc:
        recorder.fail(msg="invalid options: %s" % exc, changed=False)

    checker = HealthChecker(
        params,
        http_get=http_get,
        runner=module.run_command,
        pg_target_factory=PgTarget,
        timeout_bin=module.get_bin_path("timeout"),
        inspect=inspect,
    )
    result = wait_until(checker.run_once, params["wait_for"], params["timeout"], params["interval"])
    result["changed"] = False
    result["started_epoch"] = started_epoch
    result["report"] = report_lines(result)
    if discovered is not None:
        result["discovered"] = discovered
    failing = should_fail(result["status"], params["fail_on"])
    result["final"] = host_is_done(result["status"], discovered) and not failing
    if failing:
        recorder.fail(msg=failure_message(result, params["fail_on"]), **result)
    recorder.exit(**result)


class RunRecorder:
    """Ends the module; with the ``ledger`` option, after appending this run's line (ledger.own_run_line)."""

    def __init__(self, module, options, started_epoch):
        self.module = module
        self.options = options
        self.started = started_epoch
        # Known once the stack model is (a failure before that records the line only with ledger.path).
        self.config_dir = None

    def _record(self, result, failed):
        if self.options is None:
            return result
        if self.options["only_if_final"] and not result.get("final"):
            # Not this host's whole run (a failure never is: `final` is false or not set yet): the
            # playbook records it when the run ends.
            return result
        if failed and not (self.options.get("path") or self.config_dir):
            # Failed before the stack model was known (an invalid one): the line has no place, and
            # the failure already says what to fix. The run's summary lists the host without a record.
            return result
        results = {"health": result.get("status"), "failed_checks": result.get("failed_checks", [])}
        if failed and "status" not in result:
            results = {"error": result.get("msg")}
        try:
            path, line = own_run_line(
                self.options, self.config_dir, "failed" if failed else "ok", results, started_at=self.started
            )
            written = 0 if self.module.check_mode else append(path, line)
        except LedgerError as exc:
            if failed:  # the check's own failure stays the message; the ledger's is added to it
                return dict(result, msg="%s (and the run ledger: %s)" % (result.get("msg"), exc))
            self.module.fail_json(msg=str(exc), **result)
        return dict(result, ledger={"line": line, "path": path, "bytes": written})

    def fail(self, **result):
        self.module.fail_json(**self._record(result, True))

    def exit(self, **result):
        self.module.exit_json(**self._record(result, False))


if __name__ == "__main__":
    main()

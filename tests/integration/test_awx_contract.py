"""AWX contract tests: every job template of awx/job_templates.yml, run the way AWX runs it.

AWX itself cannot run here (it ships as registry images), so these tests run what AWX would
execute: ansible-runner (the engine of AWX jobs) through its Python API, with the survey's
answers as extra variables, the "NER11 database" credential injected as ``ner11_db_password``
and ``awx_job_id`` / ``tower_job_id`` set, against one stack shared by the whole module.

The tests are generated from the source of truth: ``pytest_generate_tests`` parametrizes over
the templates in awx/, and a template without an entry in CONTRACTS fails. Destructive templates
(restore, DR restore, adopt) run in check mode with confirmed answers plus the input validation
only: a real restore and recovery are proven by test_restore*.py and test_dr.py.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import uuid

import ansible_runner
import pytest
import yaml
from conftest import BIN, COLLECTIONS, LOCAL_INVENTORY, ROOT, Stack, docker, unique_project

AWX_DIR = os.path.join(ROOT, "awx")
EE_IMAGE = os.environ.get("NER11_EE_IMAGE", "ner11/ee:ref")
# Variables that come from the inventory or a credential, never from a survey.
INVENTORY_VARIABLES = {"ner11_stack", "ner11_db_password", "ner11_backup_dir", "ner11_target"}
INVENTORY_GROUPS = {"ner11", "ner11_db", "ner11_api", "ner11_frontend"}


class _Loader(yaml.SafeLoader):
    """YAML as Ansible reads it here: `!unsafe` strings stay strings."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def load_awx(name):
    with open(os.path.join(AWX_DIR, name)) as fh:
        return yaml.load(fh, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def templates():
    data = load_awx("job_templates.yml")
    defaults = data["ner11_awx_job_template_defaults"]
    out = []
    by_name = {t["name"]: t for t in data["ner11_awx_job_templates"]}
    for t in data["ner11_awx_job_templates"]:
        full = dict(defaults, **t)
        if "same_survey_as" in t:
            src = by_name[t["same_survey_as"]]
            full.setdefault("survey", src.get("survey", []))
            full.setdefault("launch_variables", src.get("launch_variables", []))
        full.setdefault("survey", [])
        full.setdefault("launch_variables", [])
        out.append(full)
    return out


def template(name):
    found = [t for t in templates() if t["name"] == name]
    assert found, "no job template %r in awx/job_templates.yml" % name
    return found[0]


def declared_inputs(playbook):
    """The ner11_ inputs a playbook declares (playbooks/vars/<name>.yml)."""
    path = os.path.join(ROOT, "playbooks", "vars", os.path.basename(playbook))
    assert os.path.exists(path), "%s declares no inputs: add %s" % (playbook, os.path.relpath(path, ROOT))
    with open(path) as fh:
        return yaml.safe_load(fh)["argument_specs"]["main"]["options"] or {}


def survey_answers(tpl, **overrides):
    """What AWX passes for a launch that accepts every survey default."""
    answers = {}
    for q in tpl["survey"]:
        if "default" in q and not (q.get("required") and q["default"] in ("", None)):
            value = q["default"]
            if q["type"] == "integer":
                value = int(value)
            elif q["type"] == "float":
                value = float(value)
            answers[q["variable"]] = value
    answers.update(overrides)
    return answers


# How each template is exercised (one run per playbook and job type on the shared stack):
# `answers`: survey answers a person must give (required questions without a default);
# `summary`: the global set_stats key the job must publish, keyed by inventory host; `status`:
# the expected status (None: a check-mode plan that may refuse on this stack, with its reason);
# `twin`: a destructive `run` template that is NOT run here - its check-mode twin (same playbook,
# same survey) runs instead, and its input validation through `bad`; `two_hosts`: the check run
# uses an inventory of two host aliases (the summary must keep both); `unchanged`: the check run
# must plan no change (the stack is already deployed); `bad`: a survey answer the playbook rejects
# at its first task. A real restore, DR recovery, adoption, shutdown and maintenance window are
# proven by test_restore*.py, test_dr.py, test_adopt*.py, test_service.py and test_maintenance.py.
def _db(stack):
    return stack.model["db_name"]


def _project(stack):
    return stack.project


# A 2-core CI machine shared with other suites can take longer than the default 5 s per health
# check; the health jobs here allow 30 s (the checks are the same).
LOADED_MACHINE = {"ner11_health_check_timeout": 30}
FORCED_WINDOW = {"ner11_force_window": "true"}
# Templates whose `run` job type stops or replaces something: proven here by their check twin.
DESTRUCTIVE = {
    "playbooks/restore.yml",
    "playbooks/dr_restore.yml",
    "playbooks/adopt.yml",
    "playbooks/shutdown.yml",
    "playbooks/maintenance.yml",
}

CONTRACTS = {
    # The module's stack is deployed by this template's job (the fixture `stack`).
    "NER11 deploy": {"summary": "ner11_deploy", "bad": {"ner11_stack_state": "gone"}},
    "NER11 deploy (check)": {"summary": "ner11_deploy", "two_hosts": True, "unchanged": True},
    "NER11 health": {"answers": LOADED_MACHINE, "summary": "ner11_health", "bad": {"ner11_health_timeout": "soon"}},
    "NER11 backup": {"summary": "ner11_backup", "bad": {"ner11_backup_components": ["db", "everything"]}},
    "NER11 verify backups": {"summary": "ner11_verify_backups", "bad": {"ner11_backup_max_age_hours": "a day"}},
    "NER11 DR drill": {"summary": "ner11_dr_drill", "bad": {"ner11_restore_jobs": "many"}},
    "NER11 restore (check)": {"answers": {"ner11_confirm": _db}, "summary": "ner11_restore", "two_hosts": True},
    "NER11 restore": {"answers": {"ner11_confirm": _db}, "twin": "NER11 restore (check)", "bad": {"ner11_force": "perhaps"}},
    "NER11 DR restore (check)": {"summary": "ner11_dr_restore", "status": None},
    "NER11 DR restore": {"twin": "NER11 DR restore (check)", "bad": {"ner11_health_timeout": "1h"}},
    "NER11 adopt (check)": {"answers": {"ner11_confirm": _project}, "summary": "ner11_adopt", "status": None, "two_hosts": True},
    "NER11 adopt": {"answers": {"ner11_confirm": _project}, "twin": "NER11 adopt (check)"},
    "NER11 incident db": {"summary": "ner11_incident", "bad": {"ner11_incident_mode": "panic"}},
    "NER11 incident api": {"summary": "ner11_incident", "bad": {"ner11_incident_blocked_seconds": "long"}},
    "NER11 incident disk": {"summary": "ner11_incident", "bad": {"ner11_incident_mode": "wipe"}},
    "NER11 service": {"summary": "ner11_service", "bad": {"ner11_action": "reboot"}},
    "NER11 service (check)": {"answers": {"ner11_service": "all", "ner11_action": "stop"}, "summary": "ner11_service"},
    "NER11 shutdown (check)": {"summary": "ner11_service"},
    "NER11 shutdown": {"twin": "NER11 shutdown (check)"},
    "NER11 startup": {"summary": "ner11_startup"},
    # Check mode of a forced window prints the plan and publishes no summary (the report is skipped).
    "NER11 maintenance (check)": {"answers": FORCED_WINDOW, "summary": None},
    "NER11 maintenance": {"answers": FORCED_WINDOW, "twin": "NER11 maintenance (check)", "bad": {"ner11_maintenance_tier": "yearly"}},
}  # fmt: skip
# Real runs, in this order, after the deploy: the writers first (the checks plan from a backup).
WRITERS_FIRST = ["NER11 backup", "NER11 verify backups"]
WRITERS_LAST = ["NER11 DR drill", "NER11 incident db", "NER11 incident api", "NER11 incident disk",
                "NER11 health", "NER11 service", "NER11 startup"]  # fmt: skip
# Check-mode jobs and rejected answers change nothing: they run side by side, like AWX's
# allow_simultaneous check templates, between two snapshots of the stack.
PARALLEL_JOBS = 3


def pytest_generate_tests(metafunc):
    if "template_name" in metafunc.fixturenames:
        # Every template is a parameter: one without a contract fails.
        metafunc.parametrize("template_name", [t["name"] for t in templates()])
    if "rejectable_template" in metafunc.fixturenames:
        # The templates whose contract names a survey answer the playbook must reject (a template
        # without a survey, or with free-text answers only, has none: it is not a parameter).
        metafunc.parametrize("rejectable_template", [n for n, c in CONTRACTS.items() if c.get("bad")])


# --- running jobs ------------------------------------------------------------------------------


class Job:
    """One ansible-runner run: status, rc, events, and the artifacts AWX would keep."""

    def __init__(self, runner, pdd):
        self.status = runner.status
        self.rc = runner.rc
        self.events = list(runner.events)
        self.stdout = runner.stdout.read()
        self.pdd = pdd

    @property
    def artifacts(self):
        """The global set_stats of the run (what AWX stores as the job's artifacts)."""
        for ev in self.events:
            if ev.get("event") == "playbook_on_stats":
                return ev["event_data"].get("artifact_data") or {}
        return {}

    @property
    def stats(self):
        for ev in self.events:
            if ev.get("event") == "playbook_on_stats":
                return ev["event_data"]
        return {}

    def failed_tasks(self):
        return [
            (ev["event_data"].get("task"), ev["event_data"].get("res", {}).get("msg", ""))
            for ev in self.events
            if ev.get("event") == "runner_on_failed" and not ev["event_data"].get("ignore_errors")
        ]

    def first_task(self):
        for ev in self.events:
            if ev.get("event") in ("runner_on_ok", "runner_on_failed", "runner_on_skipped"):
                return ev["event_data"].get("task")
        return None

    def explain(self):
        return "status=%s rc=%s failed=%s\n%s" % (self.status, self.rc, self.failed_tasks(), self.stdout[-3000:])


def private_dir(tmp_root, ident):
    pdd = os.path.join(tmp_root, ident)
    os.makedirs(pdd)
    return pdd


def run_job(stack, tmp_root, playbook, answers, check=False, inventory=LOCAL_INVENTORY, extra=None, **kwargs):
    """Run a playbook as an AWX job would: extra vars = survey answers + credential + job ids."""
    ident = "job-%s" % uuid.uuid4().hex[:8]
    job_id = abs(hash(ident)) % 100000
    extravars = dict(stack.vars)  # ner11_stack: the inventory; ner11_db_password: the credential
    extravars.update({"ner11_backup_dir": stack.backup_dir, "awx_job_id": job_id, "tower_job_id": job_id})
    extravars.update(extra or {})
    extravars.update(answers)
    pdd = private_dir(tmp_root, ident)
    envvars = {
        "ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
    }
    cmdline = "--check --diff" if check else None
    runner = ansible_runner.run(
        private_data_dir=pdd, project_dir=ROOT, playbook=playbook, inventory=inventory, extravars=extravars,
        envvars=envvars, cmdline=cmdline, ident=ident, quiet=True, timeout=900, **kwargs,
    )  # fmt: skip
    return Job(runner, pdd)


def snapshot(stack):
    """Everything a check-mode job must leave alone: containers, volumes, files of the stack."""
    ids = docker("ps", "-aq", "--filter", "label=io.ner11.project=%s" % stack.project).stdout.split()
    containers = []
    if ids:
        fmt = "{{.Name}} {{.Id}} {{.State.Status}} {{.State.StartedAt}} {{.RestartCount}}"
        containers = sorted(docker("inspect", "-f", fmt, *ids).stdout.splitlines())
    volumes = sorted(docker("volume", "ls", "-q", "--filter", "label=io.ner11.project=%s" % stack.project).stdout.split())
    files = []
    for root in (stack.backup_dir, "/var/lib/ner11/%s" % stack.project):
        for dirpath, _dirs, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                files.append((p, st.st_size, st.st_mtime_ns))
    return {"containers": containers, "volumes": volumes, "files": sorted(files), "canary": stack.psql("SELECT 1")}


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work_dir():
    """Job directories and the backup catalog (not under pytest's basetemp: other sessions prune it)."""
    path = tempfile.mkdtemp(prefix="ner11-awx-", dir="/var/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def jobs_dir(work_dir):
    path = os.path.join(work_dir, "jobs")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def stack(work_dir, jobs_dir):
    """One reference stack for every job of this module, deployed by the NER11 deploy template."""
    s = Stack(unique_project("itawx"))
    s.backup_dir = os.path.join(work_dir, "backups")
    s.vars["ner11_backup_dir"] = s.backup_dir
    s.remove()
    s.deploy_job = run_job(s, jobs_dir, template("NER11 deploy")["playbook"], survey_answers(template("NER11 deploy")))
    if s.deploy_job.status != "successful":
        s.remove()
        pytest.fail("deploying the stack through the NER11 deploy template failed: %s" % s.deploy_job.explain())
    yield s
    s.remove()


def resolve(answers, stack):
    return {k: (v(stack) if callable(v) else v) for k, v in answers.items()}


def assert_no_secret(job, stack):
    secret = stack.password
    leaks = [ev.get("event") for ev in job.events if secret in json.dumps(ev)]
    assert not leaks, "the database password appears in job events: %s" % leaks
    assert secret not in job.stdout


def _alias_inventory(path, hosts):
    """An inventory of host aliases of this machine, each in every ner11 group."""
    inv = {
        "all": {
            "children": {
                "ner11": {"children": {g: {"hosts": {h: None for h in hosts}} for g in sorted(INVENTORY_GROUPS - {"ner11"})}}
            }
        }
    }
    os.makedirs(path)
    with open(os.path.join(path, "hosts.yml"), "w") as fh:
        yaml.safe_dump(inv, fh)
    os.makedirs(os.path.join(path, "group_vars"))
    shutil.copy(os.path.join(LOCAL_INVENTORY, "group_vars", "all.yml"), os.path.join(path, "group_vars", "all.yml"))
    return path


class ContractRuns:
    """Every template's job, run once for the module: the deploy (fixture `stack`), the writers
    that the checks need (backup, verify), then the check-mode jobs and the rejected answers side
    by side between two snapshots of the stack, then the other real runs."""

    def __init__(self, stack, jobs_dir):
        self.stack = stack
        self.jobs_dir = jobs_dir
        self.jobs = {"NER11 deploy": stack.deploy_job}
        self.bad = {}
        for name in WRITERS_FIRST:
            self._run(name)
        parallel = [("job", n) for n, c in CONTRACTS.items() if self._check(n) and "twin" not in c]
        parallel += [("bad", n) for n, c in CONTRACTS.items() if c.get("bad")]
        self.before = snapshot(stack)
        with concurrent.futures.ThreadPoolExecutor(PARALLEL_JOBS) as pool:
            done = {key: pool.submit(self._launch, *key) for key in parallel}
        for (kind, name), future in done.items():
            (self.jobs if kind == "job" else self.bad)[name] = future.result()
        self.after = snapshot(stack)
        for name in WRITERS_LAST:
            self._run(name)

    @staticmethod
    def _check(name):
        return template(name)["job_type"] == "check"

    def answers(self, name):
        return survey_answers(template(name), **resolve(CONTRACTS[name].get("answers", {}), self.stack))

    def _launch(self, kind, name):
        tpl = template(name)
        answers = self.answers(name)
        inventory = LOCAL_INVENTORY
        if kind == "bad":
            answers.update(CONTRACTS[name]["bad"])
        elif CONTRACTS[name].get("two_hosts"):
            inventory = _alias_inventory(os.path.join(self.jobs_dir, "inv-%s" % uuid.uuid4().hex[:8]), ["node1", "node2"])
        return run_job(self.stack, self.jobs_dir, tpl["playbook"], answers, check=self._check(name), inventory=inventory)

    def _run(self, name):
        self.jobs[name] = self._launch("job", name)


@pytest.fixture(scope="module")
def runs(stack, jobs_dir):
    return ContractRuns(stack, jobs_dir)


# --- the source of truth is consistent -----------------------------------------------------------


def test_every_template_has_a_contract_and_every_playbook_a_template():
    names = {t["name"] for t in templates()}
    missing = sorted(names - set(CONTRACTS))
    assert not missing, "job templates without a contract test (add them to CONTRACTS): %s" % missing
    stale = sorted(n for n in CONTRACTS if n not in names)
    assert not stale, "contracts for templates that do not exist: %s" % stale
    playbooks = {t["playbook"] for t in templates()}
    on_disk = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "playbooks", "*.yml"))}
    not_jobs = {"playbooks/demo.yml", "playbooks/awx_configure.yml"}
    assert on_disk - not_jobs - playbooks == set(), "playbooks without a job template"
    for tpl in templates():
        assert os.path.exists(os.path.join(ROOT, tpl["playbook"])), tpl["name"]
        assert tpl["job_type"] in ("run", "check"), tpl["name"]


def test_workflows_and_schedules_name_existing_templates_and_survey_variables():
    tpls = {t["name"]: t for t in templates()}
    flows = load_awx("workflows.yml")["ner11_awx_workflows"]
    flow_names = {w["name"] for w in flows}
    for w in flows:
        ids = {n["identifier"] for n in w["nodes"]}
        for node in w["nodes"]:
            for edge in ("success", "failure", "always"):
                assert set(node.get(edge, [])) <= ids, (w["name"], node["identifier"], edge)
            if "approval" in node:
                continue
            tpl = tpls.get(node["job_template"])
            assert tpl is not None, "%s: node %s names no template" % (w["name"], node["identifier"])
            asked = {q["variable"] for q in tpl["survey"]}
            assert set(node.get("extra_data", {})) <= asked, (w["name"], node["identifier"], "answers no survey question")
        for q in w.get("survey", []):
            targets = [tpls[n["job_template"]] for n in w["nodes"] if n.get("job_template") in tpls]
            assert any(q["variable"] in {x["variable"] for x in t["survey"]} for t in targets), (w["name"], q["variable"])
    for s in load_awx("schedules.yml")["ner11_awx_schedules"]:
        if "workflow" in s:
            assert s["workflow"] in flow_names, s["name"]
        else:
            tpl = tpls[s["template"]]
            assert set(s.get("extra_data", {})) <= {q["variable"] for q in tpl["survey"]}, s["name"]
        assert re.match(r"^DTSTART;TZID=UTC:\d{8}T\d{6} RRULE:FREQ=(DAILY|WEEKLY|MONTHLY);", s["rrule"]), s["name"]


def _reads(path):
    """ner11_ variables a playbook reads (YAML keys, comments and group names excluded)."""
    with open(path) as fh:
        text = "\n".join(line for line in fh.read().splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"(?<!['\"\w])(ner11_[a-z0-9_]+)\b(?!\s*:)", text)) - INVENTORY_GROUPS


def test_survey_variables_are_the_playbooks_declared_inputs(template_name):
    tpl = template(template_name)
    declared = declared_inputs(tpl["playbook"])
    asked = [q["variable"] for q in tpl["survey"]] + list(tpl["launch_variables"])
    assert len(asked) == len(set(asked)), "a variable is asked twice"
    job_inputs = set(declared) - INVENTORY_VARIABLES
    assert set(asked) == job_inputs, "survey+launch %s != declared %s" % (sorted(asked), sorted(job_inputs))
    reads = _reads(os.path.join(ROOT, tpl["playbook"]))
    assert set(declared) <= reads, "declared but never read (dead): %s" % sorted(set(declared) - reads)
    undeclared = reads - set(declared) - INVENTORY_VARIABLES
    assert not undeclared, "read but not declared (missing from the survey): %s" % sorted(undeclared)
    for q in tpl["survey"]:
        spec = declared[q["variable"]]
        if "choices" in spec and q["type"] in ("multiplechoice", "multiselect"):
            assert {str(c) for c in q["choices"]} <= {str(c) for c in spec["choices"]}, q["variable"]
        if spec.get("type") == "bool":
            assert q["type"] == "multiplechoice" and set(q["choices"]) == {"true", "false"}, q["variable"]
        if "default" in spec and q.get("default") not in ("", None):
            assert str(q["default"]).lower() == str(spec["default"]).lower(), q["variable"]
    for v in tpl["launch_variables"]:
        assert declared[v]["type"] in ("list", "dict"), "%s can be a survey question" % v


def test_playbooks_stay_correct_when_sliced():
    """Under job slicing each slice is its own job: a run_once task runs once per slice and sees
    only the slice's hosts. Allowed only where the task works over the play's hosts (a per-slice
    summary); never with the inventory's groups, which would act for hosts of other slices."""
    offenders = []
    paths = glob.glob(os.path.join(ROOT, "playbooks", "*.yml"))
    paths += glob.glob(os.path.join(ROOT, "roles", "**", "*.yml"), recursive=True)
    for path in paths:
        with open(path) as fh:
            tasks = re.split(r"\n(?=\s*- name:)", fh.read())
        for task in tasks:
            if not re.search(r"^\s*run_once:\s*(true|yes)", task, re.M):
                continue
            slice_local = re.search(r"ansible_play_(hosts|hosts_all|batch)\b", task)
            # The check of the job's inputs reads no host: the same extra vars in every slice.
            inputs_only = "ansible.builtin.validate_argument_spec:" in task and not re.search(r"\bhostvars\b", task)
            if not (slice_local or inputs_only) or re.search(r"\bgroups\s*[\[.]", task):
                offenders.append("%s: %s" % (os.path.relpath(path, ROOT), task.strip().splitlines()[0]))
    assert not offenders, "run_once that assumes one job sees every host: %s" % offenders


# --- every template, run through ansible-runner ----------------------------------------------------


def test_template_runs_with_its_survey_defaults(template_name, runs):
    contract = CONTRACTS.get(template_name)
    assert contract is not None, "job template %r has no contract test: add it to CONTRACTS" % template_name
    tpl = template(template_name)
    if "twin" in contract:
        twin = template(contract["twin"])
        assert tpl["job_type"] == "run" and tpl["playbook"] in DESTRUCTIVE, (
            "only a destructive run template is proven by its twin"
        )
        assert twin["job_type"] == "check" and twin["playbook"] == tpl["playbook"], contract["twin"]
        assert (twin["survey"], twin["launch_variables"]) == (tpl["survey"], tpl["launch_variables"]), (
            "the twin asks other questions"
        )
        assert contract["twin"] in runs.jobs, "the check twin did not run"
        return
    job = runs.jobs[template_name]
    expected = contract.get("status", "successful")
    if expected:
        assert job.status == expected and job.rc == 0, job.explain()
    else:  # check mode of a recovery on a live stack may refuse; it must still plan or say why
        assert job.status in ("successful", "failed"), job.explain()
        if job.status == "failed":
            assert job.failed_tasks() and all(msg for _task, msg in job.failed_tasks()), job.explain()
    assert job.first_task() and job.first_task().startswith("Check the job's inputs"), job.first_task()
    assert_no_secret(job, runs.stack)
    if job.status == "successful" and contract["summary"]:
        summary = job.artifacts.get(contract["summary"])
        assert summary, "no global set_stats %s in the artifacts: %s" % (contract["summary"], sorted(job.artifacts))
        hosts = {"node1", "node2"} if contract.get("two_hosts") else {"localhost"}
        assert isinstance(summary, dict) and set(summary) == hosts, "summary not keyed by host: %s" % summary
    if tpl["job_type"] == "check":
        assert runs.after == runs.before, "a check-mode job changed the stack"
    if contract.get("unchanged"):
        assert sum(job.stats.get("changed", {}).values()) == 0, job.explain()


def test_bad_survey_answer_fails_at_the_first_task_naming_the_variable(rejectable_template, runs):
    contract = CONTRACTS[rejectable_template]
    job = runs.bad[rejectable_template]
    assert job.status == "failed" and job.rc != 0, job.explain()
    failed = job.failed_tasks()
    assert failed and failed[0][0].startswith("Check the job's inputs"), failed
    assert job.first_task() == failed[0][0], "a task ran before the input check"
    (variable,) = contract["bad"]
    assert variable in failed[0][1], failed[0][1]
    assert_no_secret(job, runs.stack)
    assert runs.after == runs.before, "a rejected job changed the stack"


def test_every_summary_is_global_and_keyed_by_host():
    """Only global set_stats reach AWX's artifacts; keyed by host, two hosts of a job merge."""
    offenders = []
    paths = glob.glob(os.path.join(ROOT, "playbooks", "**", "*.yml"), recursive=True)
    paths += glob.glob(os.path.join(ROOT, "roles", "**", "tasks", "*.yml"), recursive=True)
    for path in paths:
        with open(path) as fh:
            tasks = re.split(r"\n(?=\s*- name:)", fh.read())
        for task in tasks:
            if "ansible.builtin.set_stats:" not in task:
                continue
            where = "%s: %s" % (os.path.relpath(path, ROOT), task.strip().splitlines()[0])
            if re.search(r"per_host:\s*(true|yes)", task):
                offenders.append(where + " (per_host)")
            keys = re.findall(r"^\s{6,10}(ner11_[a-z0-9_]+):\s*(.*)$", task.split("data:", 1)[1], re.M)
            for key, value in keys:
                keyed = value.startswith('"{{ {inventory_hostname:') or value.startswith(">-") and "{inventory_hostname:" in task
                whole_run = "run_once: true" in task and "ansible_play_hosts_all" in task  # one summary per job (slice)
                # One task per batch, keyed by each host of the batch (batches and slices merge).
                # (from hostvars, or from a run_once fact of the batch zipped with the batch's host names)
                per_batch = (
                    "run_once: true" in task
                    and "ansible_play_batch" in task
                    and ("hostvars" in task or "zip(ansible_play_batch" in task)
                )
                rows = key == "ner11_backup_identities"  # a list whose rows name their host (lists of hosts concatenate)
                render = key == "ner11_awx_configure"  # localhost, no stack
                if not (keyed or whole_run or per_batch or rows or render):
                    offenders.append("%s (%s)" % (where, key))
    assert not offenders, "summaries that two hosts would overwrite: %s" % offenders


# --- job slicing and the execution environment ---------------------------------------------------


def test_two_slices_of_a_multi_host_inventory(stack, jobs_dir):
    """AWX job slicing: slice k of 2 gets every second host; both slices run at once. A cheap job:
    NER11 health limited to the db and api checks (a launch variable), waiting for `warn` or better."""
    hosts = ["node1", "node2", "node3"]
    slices = [hosts[0::2], hosts[1::2]]
    tpl = template("NER11 health")
    answers = survey_answers(
        tpl, ner11_health_fail_on="never", ner11_health_wait_for="warn", ner11_health_timeout=60, **LOADED_MACHINE
    )
    answers["ner11_health_checks"] = ["db", "api"]
    results = [None, None]

    def run(i):
        inv = _alias_inventory(os.path.join(jobs_dir, "slice-%d-%s" % (i, uuid.uuid4().hex[:6])), slices[i])
        results[i] = run_job(stack, jobs_dir, tpl["playbook"], answers, inventory=inv)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = {}
    for i, job in enumerate(results):
        assert job.status == "successful", job.explain()
        assert set(job.artifacts["ner11_health"]) == set(slices[i])  # a slice of two hosts keeps both
        # The run_once ledger summary of a slice covers exactly its hosts, none missing.
        assert set(job.artifacts["ner11_run"]["hosts"]) == set(slices[i]), job.artifacts["ner11_run"]
        merged.update(job.artifacts["ner11_health"])
    assert set(merged) == set(hosts)
    for host, result in merged.items():  # every slice reached the stack (an overloaded API may still warn or fail)
        assert "db:connect" not in result["failed_checks"] and "api:http" not in result["failed_checks"], (host, result)


@pytest.fixture(scope="module")
def ee_image():
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "images", "ee", "build.sh")], capture_output=True, text=True, timeout=1200, check=False
    )
    if proc.returncode != 0:
        pytest.fail("building the execution environment failed: %s" % proc.stderr[-3000:])
    return EE_IMAGE


def test_a_job_runs_inside_the_execution_environment(stack, jobs_dir, ee_image):
    """Process isolation like AWX: the project and inventory mounted into the EE, host network."""
    ident = "ee-%s" % uuid.uuid4().hex[:8]
    pdd = private_dir(jobs_dir, ident)
    project = os.path.join(pdd, "project")
    os.makedirs(project)
    shutil.copytree(os.path.join(ROOT, "playbooks"), os.path.join(project, "playbooks"))
    shutil.copy(os.path.join(ROOT, "ansible.cfg"), project)
    shutil.copytree(LOCAL_INVENTORY, os.path.join(pdd, "inventory"))
    extravars = dict(stack.vars, ner11_backup_dir=stack.backup_dir, awx_job_id=1, tower_job_id=1)
    extravars.update(survey_answers(template("NER11 health"), ner11_health_fail_on="never", **LOADED_MACHINE))
    extravars["ner11_health_checks"] = ["db", "api"]  # a cheap job: what it proves is where it ran
    runner = ansible_runner.run(
        private_data_dir=pdd, playbook="playbooks/health.yml", extravars=extravars, ident=ident, quiet=True,
        process_isolation=True, process_isolation_executable="docker", container_image=ee_image,
        container_options=["--network=host", "--label=io.ner11.test=1"],
        container_volume_mounts=["/var/run/docker.sock:/var/run/docker.sock"],
        envvars={"ANSIBLE_COLLECTIONS_PATH": "/usr/share/ansible/collections"}, timeout=600,
    )  # fmt: skip
    job = Job(runner, pdd)
    assert job.status == "successful", job.explain()
    # From inside the EE it reached the database (docker socket) and the API (host network).
    result = job.artifacts["ner11_health"]["localhost"]
    assert "db:connect" not in result["failed_checks"] and "api:http" not in result["failed_checks"], result
    # It ran in the image (the checkout's .collections is not mounted; the image's collections are used).
    with open(os.path.join(pdd, "artifacts", ident, "command")) as fh:
        command = json.load(fh)["command"]
    assert command[:2] == ["docker", "run"] and ee_image in command and "--network=host" in command, command
    assert_no_secret(job, stack)


# --- playbooks/awx_configure.yml -----------------------------------------------------------------

SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}


def test_awx_configure_renders_objects_the_controller_accepts(stack, jobs_dir):
    """Render-only run (no controller here): the surveys and workflow nodes follow AWX's rules."""
    job = run_job(stack, jobs_dir, "playbooks/awx_configure.yml", {"ner11_awx_render_only": True})
    assert job.status == "successful", job.explain()
    rendered = job.artifacts["ner11_awx_configure"]
    assert [t["name"] for t in rendered["job_templates"]] == [t["name"] for t in templates()]
    for tpl in rendered["job_templates"] + rendered["workflows"]:
        spec = tpl["survey_spec"]["spec"]
        assert tpl["survey_enabled"] == bool(spec), tpl["name"]
        assert len({q["variable"] for q in spec}) == len(spec), tpl["name"]
        for q in spec:
            where = "%s: %s" % (tpl["name"], q["variable"])
            assert q["type"] in SURVEY_TYPES and q["question_name"], where
            if q["type"] in ("multiplechoice", "multiselect"):
                choices = q["choices"].split("\n")
                defaults = q["default"].split("\n") if q["type"] == "multiselect" else [q["default"]]
                assert set(defaults) <= set(choices), where
            if q["type"] in ("integer", "float"):
                assert q["min"] <= q["default"] <= q["max"], where
            if q["type"] == "text" and q["required"]:
                assert q.get("min", 0) <= len(q["default"]) <= q.get("max", 1024) or q["default"] == "", where
    for wf in rendered["workflows"]:
        ids = [n["identifier"] for n in wf["workflow_nodes"]]
        assert len(ids) == len(set(ids)), wf["name"]
        for n in wf["workflow_nodes"]:
            ujt = n["unified_job_template"]
            assert ujt["type"] in ("job_template", "workflow_approval"), wf["name"]
            for rel in n["related"].values():
                assert {r["identifier"] for r in rel} <= set(ids), wf["name"]
    # Every template names the EE and the credential types it needs exist (built-in or defined).
    defined = {c["name"] for c in load_awx("controller.yml")["ner11_awx_credential_types"]} | {"Machine"}
    for tpl in rendered["job_templates"]:
        assert set(tpl["credential_types"]) <= defined, tpl["name"]

# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run ledger (DESIGN section 4): one redacted JSON line per playbook run per host.

``build_line()`` shapes the record (playbook, window id, steps, results, backup ids,
durations, AWX job id), ``redact()`` removes secrets from it (by key name, by URL
userinfo and by the exact secret values the caller names), ``append()`` adds it to
the ledger file (0600 in a 0700 directory) with one locked ``write`` + ``fsync``, so
concurrent runs on one host never interleave, and ``summary()`` folds the lines of
all hosts of a run into the one global summary a playbook hands to ``set_stats``.

Plain Python 3.9-compatible: unit-tested without Ansible.
"""

from __future__ import annotations

import json
import os
import re
import time

from ansible_collections.ner11.ops.plugins.module_utils.identifiers import is_file_name
from ansible_collections.ner11.ops.plugins.module_utils.stack_model import StackModelError, normalize

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX host
    fcntl = None

SCHEMA = 1
REDACTED = "(redacted)"
STATUSES = ("ok", "changed", "failed", "skipped", "refused", "rolled_back")

# Key names whose values are secrets, whatever they hold.
_SECRET_KEY_RE = re.compile(
    r"(pass(word|wd|phrase)?$|^pw$|secret|token|api[_-]?key|private[_-]?key|credential|authorization|cookie|dsn$|"
    r"connection[_-]?string|vault)",
    re.IGNORECASE,
)
# Keys that only name where a secret lives (a path) are kept: the path is not the secret.
_SECRET_KEY_SAFE_RE = re.compile(r"(_file|_path|_dir|_set|_given|_mode|_name)$", re.IGNORECASE)
# scheme://user:password@host -> scheme://user:(redacted)@host
# (bounded repetitions: a long value must not make the scan quadratic)
_URL_CRED_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31}://[^/\s:@]{0,256}):([^@\s/]{1,1024})@")
# PGPASSWORD=..., password=... inside free text (a DSN, a command line)
_KV_CRED_RE = re.compile(r"\b((?:PG)?PASS(?:WORD)?|password|secret|token)=(\S+)", re.IGNORECASE)


class LedgerError(Exception):
    """The ledger line cannot be built or written; the message names the cause and the fix."""


def _is_secret_key(key):
    key = str(key)
    return bool(_SECRET_KEY_RE.search(key)) and not _SECRET_KEY_SAFE_RE.search(key)


def _scrub_text(text, values):
    for value in values:
        if value and value in text:
            text = text.replace(value, REDACTED)
    text = _URL_CRED_RE.sub(r"\1:%s@" % REDACTED, text)
    return _KV_CRED_RE.sub(r"\1=%s" % REDACTED, text)


def redact(value, secret_values=None):
    """A copy of ``value`` without secrets.

    Values under secret-looking keys become ``(redacted)`` (an empty value stays empty,
    so "was a password given" remains visible), URL credentials and ``password=``
    pairs in strings are masked, and every occurrence of the exact strings in
    ``secret_values`` is replaced wherever it appears.
    """
    values = sorted({str(v) for v in (secret_values or []) if v not in (None, "") and len(str(v)) >= 4}, key=len, reverse=True)

    def walk(item):
        if isinstance(item, dict):
            out = {}
            for key, sub in item.items():
                if _is_secret_key(key) and sub not in (None, "", [], {}) and not isinstance(sub, bool):
                    out[str(key)] = REDACTED
                else:
                    out[str(key)] = walk(sub)
            return out
        if isinstance(item, (list, tuple)):
            return [walk(sub) for sub in item]
        if isinstance(item, str):
            return _scrub_text(item, values)
        if item is None or isinstance(item, (bool, int, float)):
            return item
        return _scrub_text(str(item), values)

    return walk(value)


def _number(value, name):
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LedgerError("%s must be a number of seconds, got %r" % (name, value)) from None
    return round(number, 3)


# What a ledger line takes from the play when its task does not say: the AWX job id (AWX sets
# awx_job_id, older Tower tower_job_id) and the database password among the values the line
# never shows. The one place of these defaults: the action plugins of run_ledger, ner_health and
# incident_record apply ``with_play_context`` on the controller, so no role or playbook repeats them.
JOB_VARS = ("awx_job_id", "tower_job_id")
REDACT_VAR = "ner11_db_password"  # the play variable whose value every line redacts
PLAY_VARS = JOB_VARS + (REDACT_VAR,)


def job_id(hostvars_or_env):
    """The AWX/Tower job id from ``awx_job_id`` / ``tower_job_id`` when present, else None."""
    for key in JOB_VARS:
        value = (hostvars_or_env or {}).get(key)
        if value not in (None, ""):
            return str(value)
    return None


def with_play_context(options, play_vars):
    """``options`` (ARGUMENT_SPEC or RUN_LINE_SUBOPTIONS keys) completed from the play (pure).

    ``play_vars``: the play's values of PLAY_VARS (templated; others are ignored). ``awx_job_id``
    is kept when given, else the play's job id (none outside AWX); ``secret_values`` gains the
    play's ``ner11_db_password`` when that is set. A new dict; ``options`` is not changed.
    """
    out = dict(options)
    if out.get("awx_job_id") in (None, ""):
        job = job_id(play_vars)
        if job is not None:
            out["awx_job_id"] = job
    password = (play_vars or {}).get(REDACT_VAR)
    if password not in (None, ""):
        secrets = _as_list(out.get("secret_values"))
        if str(password) not in secrets:
            out["secret_values"] = secrets + [str(password)]
    return out


def _as_list(value):
    """A ``type: list`` option's value as the module will read it: a string is split at commas,
    a single number is one element (ansible's ``check_type_list``), None is empty."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def normalize_steps(steps):
    """Steps as a list of ``{name, status, changed, duration_s, ...}`` (extra keys kept)."""
    out = []
    for i, step in enumerate(steps or []):
        if isinstance(step, str):
            step = {"name": step}
        if not isinstance(step, dict) or not step.get("name"):
            raise LedgerError("steps[%d] must be a mapping with a 'name' (or a plain step name), got %r" % (i, step))
        item = dict(step)
        item["name"] = str(step["name"])
        item["status"] = str(step.get("status") or "ok")
        item["changed"] = bool(step.get("changed", False))
        item["duration_s"] = _number(step.get("duration_s"), "steps[%d].duration_s" % i)
        out.append(item)
    return out


def line_from_params(p):
    """build_line from the options of ner11.ops.run_ledger (ARGUMENT_SPEC), an absent one as its
    default: the module and its action plugin build the same line, and incident_record from its
    subset of these options (``incidents.LINE_OPTIONS``)."""
    return build_line(
        p.get("playbook"),
        p.get("host"),
        status=p.get("status") or "ok",
        window=p.get("window"),
        steps=p.get("steps"),
        results=p.get("results"),
        backup_ids=p.get("backup_ids"),
        started_at=p.get("started_at"),
        finished_at=p.get("finished_at"),
        duration_s=p.get("duration_s"),
        awx_job_id=p.get("awx_job_id"),
        extra=p.get("extra"),
        secret_values=p.get("secret_values"),
    )


def build_line(
    playbook,
    host,
    status="ok",
    window=None,
    steps=None,
    results=None,
    backup_ids=None,
    started_at=None,
    finished_at=None,
    duration_s=None,
    awx_job_id=None,
    extra=None,
    secret_values=None,
    now=None,
):
    """The redacted ledger record of one run on one host (a dict, JSON-serialisable)."""
    if not playbook or not is_file_name(str(playbook)):
        raise LedgerError("playbook must be the playbook's name such as 'maintenance', got %r" % (playbook,))
    if not host:
        raise LedgerError("host must name the host the run is recorded for (inventory_hostname)")
    if status not in STATUSES:
        raise LedgerError("status must be one of %s, got %r" % (", ".join(STATUSES), status))
    now = time.time() if now is None else float(now)
    started = _number(started_at, "started_at")
    finished = _number(finished_at, "finished_at")
    if finished is None:
        finished = round(now, 3)
    duration = _number(duration_s, "duration_s")
    if duration is None and started is not None:
        duration = round(max(0.0, finished - started), 3)
    ids = backup_ids or []
    if isinstance(ids, dict):
        ids = [str(v) for _k, v in sorted(ids.items()) if v]
    elif isinstance(ids, str):
        ids = [ids]
    line = {
        "schema": SCHEMA,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "playbook": str(playbook),
        "host": str(host),
        "status": status,
        "window": window or None,
        "steps": normalize_steps(steps),
        "results": results or {},
        "backup_ids": [str(i) for i in ids if i],
        "started_at": started,
        "finished_at": finished,
        "duration_s": duration,
        "awx_job_id": str(awx_job_id) if awx_job_id not in (None, "") else None,
    }
    for key, value in sorted((extra or {}).items()):
        if key not in line:
            line[key] = value
    return redact(line, secret_values)


# The options of ner11.ops.run_ledger: one spec for the module and its action plugin.
ARGUMENT_SPEC = dict(
    path=dict(type="path"),
    stack=dict(type="dict"),
    playbook=dict(type="str", required=True),
    host=dict(type="str", required=True),
    status=dict(type="str", default="ok", choices=list(STATUSES)),
    window=dict(type="str"),
    steps=dict(type="list", elements="raw", default=[]),
    results=dict(type="dict", default={}),
    backup_ids=dict(type="list", elements="str", default=[]),
    started_at=dict(type="float"),
    finished_at=dict(type="float"),
    duration_s=dict(type="float"),
    awx_job_id=dict(type="str"),
    extra=dict(type="dict", default={}),
    secret_values=dict(type="list", elements="str", default=[], no_log=True),
)


REQUIRED_ONE_OF = [["path", "stack"]]
MUTUALLY_EXCLUSIVE = [["path", "stack"]]
LEDGER_FILE = "ledger.jsonl"


def ledger_path(p):
    """The ledger file of the options ``p`` (ARGUMENT_SPEC): ``path``, else ``ledger.jsonl`` in the
    stack model's configuration directory (``stack``, completed by stack_model.normalize)."""
    if p.get("path"):
        return p["path"]
    try:
        return os.path.join(normalize(p.get("stack") or {})["config_dir"], LEDGER_FILE)
    except StackModelError as exc:
        raise LedgerError("the stack model gives no ledger directory: %s. Fix ner11_stack or pass path." % exc) from None


# The ``ledger`` option of a module that records its own run (ner11.ops.ner_health for
# playbooks/health.yml): who and what the run is; the status and the results come from the
# module's own outcome, the file from the stack model. One task per host instead of the module and
# a run_ledger task after it (issue 14: every task of every host is a worker process).
RUN_LINE_OPTIONS = ("playbook", "host", "path", "started_at", "awx_job_id", "secret_values")
RUN_LINE_SUBOPTIONS = {k: ARGUMENT_SPEC[k] for k in RUN_LINE_OPTIONS}


def own_run_line(options, config_dir, status, results, started_at=None, now=None):
    """(path, line) of a module's own run: ``options`` per RUN_LINE_SUBOPTIONS, the file
    ``options['path']`` else ``ledger.jsonl`` in ``config_dir``; ``started_at`` when the options
    give none (the module's own start). Raises LedgerError."""
    path = options.get("path") or (os.path.join(config_dir, LEDGER_FILE) if config_dir else None)
    if not path:
        raise LedgerError("the ledger has no place: give the stack model (stack) or the ledger's path")
    check_path(path)
    begun = options.get("started_at")
    line = build_line(
        options["playbook"],
        options["host"],
        status=status,
        results=results,
        started_at=started_at if begun is None else begun,
        awx_job_id=options.get("awx_job_id"),
        secret_values=options.get("secret_values"),
        now=now,
    )
    return path, line


def write_line(path, data):
    """The steps of one append, in the standard library only: the directory 0700 when this call
    creates it (an existing one keeps its mode: it may be shared, like /tmp), the file 0600, the
    whole line in one ``write`` under an exclusive ``flock``, fsync. A write that fails part way (a
    full disk) is cut back to the file's size before it, so the next line does not join a torn
    one. Raises OSError. append() runs it here; append_script() sends its source to the host's
    Python."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o700)
        os.chmod(parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


_SCRIPT_HEAD = """
import json, os, sys
try:
    import fcntl
except ImportError:
    fcntl = None
"""
_SCRIPT_MAIN = """
try:
    data = sys.stdin.buffer.read()
    write_line(sys.argv[1], data)
    print(json.dumps({"bytes": len(data)}))
except OSError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def append_script():
    """append() as one small program for the host's Python (argv[1] the ledger path, the encoded
    line on stdin; prints {"bytes": n} or {"error": text}): write_line's own source and a driver.
    The run_ledger action plugin runs it as one plain command, so a playbook's ledger line costs
    no module start-up on the host. Built on the controller, where this file's source is at hand."""
    import inspect

    return _SCRIPT_HEAD + "\n" + inspect.getsource(write_line) + _SCRIPT_MAIN


def append_error(path, cause):
    """The LedgerError of a failed append (module and action plugin word it the same)."""
    return LedgerError(
        "cannot append to the run ledger %s: %s; check free space and permissions there, or set another ledger path"
        % (path, cause)
    )


def check_path(path):
    if not path or not os.path.isabs(path):
        raise LedgerError("path must be an absolute file path for the ledger, got %r" % (path,))


def encode(line):
    """One JSON line (sorted keys, no newline inside, ending with one)."""
    return (json.dumps(line, sort_keys=True, separators=(",", ":"), default=str) + "\n").encode("utf-8")


def append(path, line):
    """Append ``line`` to the ledger ``path`` (0600; its directory 0700, created).

    The whole line goes out in one ``write`` under an exclusive ``flock`` and is
    fsynced, so two runs on one host never interleave or tear a line. Returns the
    number of bytes written.
    """
    check_path(path)
    data = encode(line)
    try:
        write_line(path, data)
    except OSError as exc:
        raise append_error(path, exc) from None
    return len(data)


def read(path, playbook=None, limit=None):
    """The ledger lines (dicts), oldest first; unparsable lines are skipped. ``limit`` keeps the newest N."""
    out = []
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                try:
                    item = json.loads(raw.decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    continue
                if isinstance(item, dict) and (playbook is None or item.get("playbook") == playbook):
                    out.append(item)
    except FileNotFoundError:
        return []
    if limit:
        out = out[-int(limit) :]
    return out


def summary(lines):
    """The global summary of one run over all hosts (for ``set_stats`` with ``per_host: false``).

    ``lines`` are the ledger records of the hosts (missing hosts given as None are
    counted as ``no_record``). Status is the worst host status.
    """
    order = {"ok": 0, "skipped": 0, "changed": 1, "rolled_back": 3, "refused": 2, "failed": 4}
    hosts = {}
    backup_ids = {}
    playbooks = set()
    windows = set()
    jobs = set()
    worst = "ok"
    durations = []
    missing = []
    for entry in lines or []:
        if not isinstance(entry, dict):
            continue
        host = str(entry.get("host") or "")
        if entry.get("no_record"):
            missing.append(host)
            continue
        status = str(entry.get("status") or "ok")
        hosts[host] = status
        if order.get(status, 4) > order.get(worst, 0):
            worst = status
        if entry.get("backup_ids"):
            backup_ids[host] = list(entry["backup_ids"])
        playbooks.add(str(entry.get("playbook") or ""))
        if entry.get("window"):
            windows.add(str(entry["window"]))
        if entry.get("awx_job_id"):
            jobs.add(str(entry["awx_job_id"]))
        if entry.get("duration_s") is not None:
            durations.append(float(entry["duration_s"]))
    if missing and worst in ("ok", "changed", "skipped"):
        worst = "failed"
    return {
        "playbook": ",".join(sorted(p for p in playbooks if p)) or None,
        "status": worst if hosts or missing else "skipped",
        "hosts": hosts,
        "hosts_without_record": sorted(missing),
        "failed_hosts": sorted(h for h, s in hosts.items() if s == "failed") + sorted(missing),
        "window": ",".join(sorted(windows)) or None,
        "backup_ids": backup_ids,
        "awx_job_id": ",".join(sorted(jobs)) or None,
        "duration_s_max": max(durations) if durations else None,
    }

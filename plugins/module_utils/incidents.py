# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Incident records: the files of one incident run, written 0600 in a 0700 directory.

One call writes every file of the record (the JSON record, the markdown report, the
evidence) atomically (temporary file, fsync, rename) and appends the run's line to the run
ledger: the line every playbook writes (``ledger.build_line``: redacted, one locked write,
fsync). Plain Python: unit-tested without Ansible.
"""

from __future__ import annotations

import json
import os

from ansible_collections.ner11.ops.plugins.module_utils import ledger as run_ledger
from ansible_collections.ner11.ops.plugins.module_utils.catalog import atomic_write
from ansible_collections.ner11.ops.plugins.module_utils.identifiers import is_file_name


class RecordError(Exception):
    """The record cannot be written; the message names the cause and the fix."""


def plan(directory, files, ledger=None):
    """The absolute paths the record would write, checked. Raises RecordError."""
    if not directory or not os.path.isabs(directory):
        raise RecordError("dir must be an absolute path, got %r" % directory)
    if ledger is not None and not os.path.isabs(ledger):
        raise RecordError("ledger must be an absolute path, got %r" % ledger)
    paths = []
    for name in sorted(files or {}):
        if not is_file_name(name):
            raise RecordError("file name %r is not a plain file name (letters, digits, '.', '_', '-')" % name)
        paths.append(os.path.join(directory, name))
    return paths


def _private_dir(path, own=True):
    """``path`` 0700: created so, and made so when it exists and is ``own`` (the record's own
    directory); a directory above it that exists keeps its mode (it may be shared, like /tmp)."""
    if not os.path.isdir(path):
        os.makedirs(path, 0o700)
        own = True
    if own:
        os.chmod(path, 0o700)


# The options of ner11.ops.run_ledger an incident's line takes (incident_record's ``ledger_line``);
# their spec is run_ledger's own (``ledger.ARGUMENT_SPEC``).
LINE_OPTIONS = ("playbook", "host", "status", "results", "started_at", "finished_at", "awx_job_id", "secret_values")


def record_line(options):
    """The ledger line of an incident run from ``options`` (LINE_OPTIONS), built as run_ledger
    builds it (``ledger.line_from_params``): the standard line, redacted. Raises RecordError."""
    try:
        return run_ledger.line_from_params(options or {})
    except run_ledger.LedgerError as exc:
        raise RecordError("the incident's ledger line is invalid: %s" % exc) from None


def write(directory, files, ledger=None, line=None, secret_values=None):
    """Write ``files`` ({name: text}) into ``directory`` (0700, created) 0600 each, then append
    ``line`` (``record_line``) to the run ledger ``ledger`` (``ledger.append``). Returns the paths.

    Each file is redacted first as the ledger line is (``ledger.redact``: the exact
    ``secret_values``, URL credentials, ``password=`` pairs, secret-looking keys): container logs
    are kept in a record, and an application may log its connection string."""
    paths = plan(directory, files, ledger)
    files = {name: run_ledger.redact(text, secret_values) for name, text in (files or {}).items()}
    try:
        _private_dir(os.path.dirname(directory.rstrip("/")) or "/", own=False)
        _private_dir(directory)
        for name in sorted(files or {}):
            text = files[name]
            if not isinstance(text, str):
                text = json.dumps(text, indent=2, sort_keys=True) + "\n"
            atomic_write(os.path.join(directory, name), text.encode("utf-8"), 0o600)
    except OSError as exc:
        raise RecordError(
            "cannot write the incident record in %s: %s; check free space and permissions there, "
            "or set another record directory" % (directory, exc)
        ) from None
    if ledger is not None and line is not None:
        try:
            run_ledger.append(ledger, line)
        except run_ledger.LedgerError as exc:
            raise RecordError(str(exc)) from None
    return paths

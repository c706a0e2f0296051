# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one command runner of the collection's cores.

Every external command a core runs goes through a :class:`CommandRunner`:

* it wraps a callable with the signature of ``AnsibleModule.run_command``
  (``run(args, data=None, environ_update=None, use_unsafe_shell=False, ...)``);
  modules pass ``module.run_command``, unit tests a subprocess-based callable;
* it records every command it runs, secrets replaced by ``********``, for the
  modules' ``executed_commands`` return value;
* a failure has one shape, :class:`CommandError`: the argv, the return code,
  the last line of the tool's error output and a message in plain words.

Plain Python 3.9 (no Ansible import), so the cores stay unit-testable.
"""

from __future__ import annotations

import shlex
import threading

REDACTED = "********"


def last_line(text):
    """The last non-empty line of a tool's output (its error, usually), or ``no output``."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


class CommandError(Exception):
    """A command failed. ``argv`` (redacted), ``rc``, ``stderr_tail`` and a plain-language message."""

    def __init__(self, argv, rc, stdout="", stderr="", what=None, hint=None, display=None):
        self.argv = list(argv) if isinstance(argv, (list, tuple)) else [argv]
        self.rc = rc
        self.stdout = stdout or ""
        self.stderr = stderr or ""
        self.stderr_tail = last_line(self.stderr or self.stdout)
        self.what = what or display or " ".join(self.argv[:3])
        self.hint = hint
        message = "%s failed (rc=%s): %s" % (self.what, rc, self.stderr_tail)
        if hint:
            message += "; %s" % hint
        super().__init__(message)


class CommandRunner:
    """Runs commands through ``run`` (``AnsibleModule.run_command``'s signature) and records them.

    ``secrets``: strings that must never appear in ``commands`` or in error messages.
    """

    def __init__(self, run, secrets=()):
        if isinstance(run, CommandRunner):
            raise TypeError("CommandRunner wraps a run_command callable, not another CommandRunner")
        self._run = run
        self._secrets = [s for s in secrets if s]
        self.commands = []

    @classmethod
    def wrap(cls, run):
        """``run`` itself when it is already a CommandRunner, else a new one around it."""
        return run if isinstance(run, cls) else cls(run)

    def add_secret(self, value):
        if value and value not in self._secrets:
            self._secrets.append(str(value))

    def redact(self, text):
        text = "" if text is None else str(text)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def display(self, argv):
        """A shell-quoted, secret-free line for ``argv`` (a list) or a shell line (a string)."""
        line = argv if isinstance(argv, str) else shlex.join(str(a) for a in argv)
        return self.redact(line)

    def _call(self, args, data, env, extra):
        kwargs = dict(extra)
        if data is not None:
            kwargs["data"] = data
            kwargs.setdefault("binary_data", False)
        if env:
            kwargs["environ_update"] = dict(env)
        return self._run(args, **kwargs)

    def _finish(self, argv, result, check, ok_rcs, what, hint, shown):
        rc, out, err = result
        if check and rc not in ok_rcs:
            raise CommandError(
                [self.redact(a) for a in (argv if isinstance(argv, (list, tuple)) else [argv])],
                rc,
                self.redact(out),
                self.redact(err),
                what=what,
                hint=hint,
                display=shown,
            )
        return rc, out, err

    def run(self, argv, data=None, env=None, check=True, ok_rcs=(0,), what=None, hint=None, display=None, **kwargs):
        """Run ``argv`` (a list); returns ``(rc, stdout, stderr)``.

        Raises :class:`CommandError` when ``check`` and ``rc`` is not in ``ok_rcs``.
        ``display`` replaces the recorded line (e.g. a shorter description of a long script).
        """
        argv = [str(a) for a in argv]
        shown = self.redact(display) if display else self.display(argv)
        self.commands.append(shown)
        result = self._call(argv, data, env, kwargs)
        return self._finish(argv, result, check, ok_rcs, what, hint, shown)

    def shell(self, line, data=None, env=None, check=True, ok_rcs=(0,), what=None, hint=None, display=None):
        """Run a bash line with ``pipefail`` (redirections, pipes); every word in it must be shlex-quoted already."""
        shown = self.redact(display) if display else self.display(line)
        self.commands.append(shown)
        result = self._call(["/bin/bash", "-o", "pipefail", "-c", line], data, env, {})
        return self._finish(line, result, check, ok_rcs, what, hint, shown)


class ThreadFailure(Exception):
    """``fail_json`` was called outside the main thread: the failure of that thread's work."""


def main_thread_failures(module):
    """Make ``module.fail_json`` raise :class:`ThreadFailure` in every thread but the main one.

    ``AnsibleModule.run_command`` calls ``fail_json`` itself when a command cannot start (a fork
    refused on an overloaded host, a binary gone). In a worker thread that prints a result and
    ends only that thread; the main thread then prints its own result, and Ansible cannot read
    two. With this, the failure is an exception of the thread's work (a check's future, a
    background verify), reported by the main thread in the one result. Returns ``module``.
    """
    fail_json = module.fail_json

    def fail(msg=None, **kwargs):
        if threading.current_thread() is threading.main_thread():
            return fail_json(msg=msg, **kwargs)
        raise ThreadFailure(msg or "a command could not run")

    module.fail_json = fail
    return module


def concurrently(*calls):
    """Run ``calls`` at once (the first in this thread); their results in order.

    When calls fail, the error of the first failing call in the order given is raised (as if
    they had run one after the other), whichever failed first in time.
    """
    results = [None] * len(calls)
    errors = []

    def work(index):
        try:
            results[index] = calls[index]()
        except Exception as exc:  # noqa: BLE001 - raised again below, in the caller's thread
            errors.append((index, exc))

    threads = [threading.Thread(target=work, args=(i,), name="ner11-read-%d" % i, daemon=True) for i in range(1, len(calls))]
    for thread in threads:
        thread.start()
    work(0)
    for thread in threads:
        thread.join()
    if errors:
        raise min(errors, key=lambda error: error[0])[1]
    return results

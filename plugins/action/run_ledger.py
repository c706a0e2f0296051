# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of ner11.ops.run_ledger: the ledger line without a module start-up on the host.

Every playbook ends with one ledger line per host. As a module that line cost a full module
run (payload, a Python start-up importing AnsibleModule, the module's own imports): about
0.4 s of a 1-3 s playbook. Here the line is built and redacted on the controller with the
same code (module_utils/ledger.py ``line_from_params``), then appended by one plain command - the
host's Python running ``ledger.append_script()`` with the line on stdin (directory 0700, file
0600, one write under flock, fsync: the steps of ``ledger.append``).

When the host's Python is not known yet (interpreter discovery has not run on this host) or
the command cannot run, the module runs instead, as before. Check mode returns the line and
writes nothing, like the module.

What the task does not give is taken from the play (``ledger.with_play_context``): the AWX job
id and the database password among the values the line never shows.
"""

from __future__ import annotations

import json
import shlex

from ansible.plugins.action import ActionBase

from ansible_collections.ner11.ops.plugins.module_utils.ledger import (
    ARGUMENT_SPEC,
    MUTUALLY_EXCLUSIVE,
    REQUIRED_ONE_OF,
    LedgerError,
    append_error,
    append_script,
    check_path,
    encode,
    ledger_path,
    line_from_params,
    with_play_context,
)
from ansible_collections.ner11.ops.plugins.plugin_utils.play_context import play_vars

MODULE = "ner11.ops.run_ledger"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def _host_python(self, task_vars):
        """The interpreter modules use on this host, or None when it is not known without discovery."""
        try:
            from ansible.executor.module_common import _get_shebang

            _shebang, interpreter = _get_shebang(
                "/usr/bin/python",
                task_vars,
                self._templar,
                remote_is_local=bool(getattr(self._connection, "_remote_is_local", False)),
            )
        except Exception:  # discovery needed, or another core version: the module path decides
            return None
        return interpreter if interpreter and "{{" not in str(interpreter) else None

    def _module(self, task_vars, args):
        result = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        result["ledger_writer"] = "module"
        return result

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = with_play_context(self._task.args, play_vars(self._templar, task_vars))
        # validate_argument_spec reads the task's args: the completed ones are lent to it and the
        # task's own put back, so the password added to secret_values never travels with the task
        # (callbacks print a task's args).
        original, self._task.args = self._task.args, args
        try:
            _validation, p = self.validate_argument_spec(
                argument_spec=ARGUMENT_SPEC, required_one_of=REQUIRED_ONE_OF, mutually_exclusive=MUTUALLY_EXCLUSIVE
            )
        finally:
            self._task.args = original
        python = self._host_python(task_vars)
        if python is None:
            result.update(self._module(task_vars, args))
            return result
        try:
            path = ledger_path(p)
            check_path(path)
            line = line_from_params(p)
        except LedgerError as exc:
            result.update(failed=True, changed=False, msg=str(exc))
            return result
        result.update(changed=False, line=line, path=path, bytes=0, ledger_writer="command")
        if self._task.check_mode:
            return result
        # The interpreter may be a command with arguments ("/usr/bin/env python3"); -S: the program
        # needs only the standard library, so the host's site-packages are not scanned.
        argv = shlex.split(str(python)) + ["-S", "-c", append_script(), path]
        cmd = " ".join(shlex.quote(a) for a in argv)
        try:
            res = self._low_level_execute_command(cmd, in_data=encode(line))
            answer = json.loads((res.get("stdout") or "").strip().splitlines()[-1])
        except Exception:  # no Python there after all, no stdin on this connection, garbled output
            answer = None
        if not isinstance(answer, dict) or not ("bytes" in answer or "error" in answer):
            # Nothing was written (the program prints only after its fsync): the module writes it.
            result.update(self._module(task_vars, args))
            return result
        if "error" in answer:
            result.update(failed=True, msg=str(append_error(path, answer["error"])))
            return result
        result["bytes"] = int(answer.get("bytes") or 0)
        return result

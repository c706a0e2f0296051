# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the ledger's play context (``ledger.with_play_context``).

The AWX job id and the password to redact are taken from the play in one place, not passed by
every task: the action plugin of ner11.ops.run_ledger reads them with ``play_vars``, and the
modules that write their own run's line (ner11.ops.ner_health, ner11.ops.incident_record) run
through ``LedgerContextAction``.
"""

from __future__ import annotations

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash

from ansible_collections.ner11.ops.plugins.module_utils.ledger import PLAY_VARS, with_play_context


def play_vars(templar, task_vars):
    """The play's templated values of ``ledger.PLAY_VARS`` that are set.

    A value that does not template (an undefined variable inside it) is left out: the line
    cannot hold what the play cannot compute either.
    """
    out = {}
    for name in PLAY_VARS:
        if name not in (task_vars or {}):
            continue
        try:
            out[name] = templar.template(task_vars[name])
        except AnsibleError:
            continue
    return out


class LedgerContextAction(ActionBase):
    """Runs ``MODULE`` as any module runs (check mode, async), its ``OPTION`` (a ledger line's
    options, when the task gives them) completed from the play first."""

    MODULE = ""
    OPTION = "ledger"
    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if isinstance(args.get(self.OPTION), dict):
            args[self.OPTION] = with_play_context(args[self.OPTION], play_vars(self._templar, task_vars))
        wrap_async = self._task.async_val and not self._connection.has_native_async
        result = merge_hash(
            result, self._execute_module(module_name=self.MODULE, module_args=args, task_vars=task_vars, wrap_async=wrap_async)
        )
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

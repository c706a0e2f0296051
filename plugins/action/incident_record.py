# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of ner11.ops.incident_record: the module, its O(ledger_line) completed from the play.

What the task's ``ledger_line`` does not say - the AWX job id, the database password among the
values the line never shows - is taken from the play on the controller (``ledger.with_play_context``,
shared with ner11.ops.run_ledger and ner11.ops.ner_health); then the module runs.
"""

from __future__ import annotations

from ansible_collections.ner11.ops.plugins.plugin_utils.play_context import LedgerContextAction


class ActionModule(LedgerContextAction):
    MODULE = "ner11.ops.incident_record"
    OPTION = "ledger_line"

# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: canary_count_sql
short_description: One SELECT counting the rows of canary tables
version_added: 1.0.0
description:
- Builds the same SQL the modules use to count canary tables (M(ner11.ops.pg_backup) records these
  counts, M(ner11.ops.pg_restore) and M(ner11.ops.backup_verify) compare them), so roles never build
  SQL text themselves.
- The result is one C(SELECT) without a trailing semicolon giving a row C(table, count) per table;
  the count is NULL for a table that does not exist. Embed it as a sub-select to reshape the rows.
- Table names follow the collection's one name rule (C(name) or C(schema.name), for example C(public.t));
  any other name fails the template with a message naming it.
options:
  _input:
    description: The canary tables.
    type: list
    elements: str
    required: true
author:
- ner11.ops maintainers
"""

EXAMPLES = r"""
- name: Count the canary tables
  community.docker.docker_container_exec:
    container: "{{ postgres_container }}"
    user: postgres
    argv: [psql, -X, -At, -v, ON_ERROR_STOP=1, -d, ner11_db, -c, "{{ canaries | ner11.ops.canary_count_sql }}"]
  vars:
    canaries: [public.t, vendor_equipment]
"""

RETURN = r"""
_value:
  description: One SQL C(SELECT) statement (no trailing semicolon).
  type: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.ner11.ops.plugins.module_utils.pgexec import canary_count_sql as _canary_count_sql


def canary_count_sql(tables):
    try:
        return _canary_count_sql(list(tables or []))
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule(object):
    def filters(self):
        return {"canary_count_sql": canary_count_sql}

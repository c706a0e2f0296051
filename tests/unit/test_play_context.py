"""Unit tests of plugins/plugin_utils/play_context.py: what the ledger writers take from the play."""

from __future__ import annotations

import pytest

template = pytest.importorskip("ansible.template")  # controller code: not in the Python 3.9 (managed node) run

from ansible.parsing.dataloader import DataLoader  # noqa: E402

from ansible_collections.ner11.ops.plugins.module_utils.ledger import with_play_context  # noqa: E402
from ansible_collections.ner11.ops.plugins.plugin_utils.play_context import play_vars  # noqa: E402


def test_play_vars_templates_the_three_variables_and_leaves_out_what_does_not_template():
    templar = template.Templar(loader=DataLoader(), variables={"job": 41})
    task_vars = {
        "awx_job_id": template.trust_as_template("{{ job + 1 }}"),
        "tower_job_id": 5,
        "ner11_db_password": template.trust_as_template("{{ a_vault_variable_not_loaded }}"),
        "ner11_stack": {"project": "p"},
    }
    got = play_vars(templar, task_vars)
    assert got == {"awx_job_id": 42, "tower_job_id": 5}
    # An untemplatable password cannot reach the line either; the job id still does.
    assert with_play_context({"playbook": "p"}, got) == {"playbook": "p", "awx_job_id": "42"}
    assert play_vars(templar, {}) == {} and play_vars(templar, None) == {}

"""A subprocess-based stand-in for ``AnsibleModule.run_command`` (unit tests only).

The cores take a ``run_command``-shaped callable; modules pass ``module.run_command``.
Tests pass :func:`run_command` so the real commands (and real failures) run.
"""

from __future__ import annotations

import os
import subprocess


def run_command(args, data=None, environ_update=None, use_unsafe_shell=False, executable=None, binary_data=False, **_ignored):
    env = dict(os.environ)
    env.update(environ_update or {})
    if data is not None and not binary_data and not data.endswith("\n"):
        data += "\n"  # run_command appends a newline unless binary_data
    proc = subprocess.run(  # noqa: S603 - tests run real commands
        args,
        input=data,
        capture_output=True,
        text=True,
        env=env,
        shell=use_unsafe_shell,  # noqa: S602 - the shell form is what run_command(use_unsafe_shell=True) does
        executable=executable,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr

"""Every docker_container task that starts or stops a container BY NAME compares nothing.

community.docker.docker_container with ``state: started`` / ``stopped`` and only a ``name``
still compares the options it was (not) given with the running container's and, when it sees a
difference, destroys the container and creates a new one from the image alone: no published
ports, no labels, no network, the image's default environment. The multi-host fleet found it
(docs/multi-host.md): after a full stop, startup.yml re-created the frontend. A start or stop by
name must therefore pass ``comparisons: {'*': ignore}``. A task that names an ``image`` is a
create/converge task (the stack role) and is left to its own comparisons.
"""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
MODULES = {"community.docker.docker_container", "docker_container"}
STATES = {"started", "stopped"}
# Keys that hold nested task lists (blocks).
NESTED = ("block", "rescue", "always")


def _tasks(tasks):
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        yield task
        for key in NESTED:
            yield from _tasks(task.get(key))


def offending_tasks(text):
    """Names of the tasks in a task file's text that start/stop by name without ignoring comparisons."""
    bad = []
    for task in _tasks(yaml.safe_load(text) or []):
        module = next((m for m in MODULES if m in task), None)
        if module is None:
            continue
        args = task[module] or {}
        if args.get("state", "started") not in STATES or "image" in args:
            continue
        if (args.get("comparisons") or {}).get("*") != "ignore":
            bad.append(task.get("name", "<unnamed>"))
    return bad


def _task_files():
    files = sorted((ROOT / "roles").glob("*/tasks/**/*.yml"))
    assert len(files) > 50, "found only %d task files under roles/*/tasks" % len(files)
    return files


def test_every_start_or_stop_by_name_ignores_comparisons():
    found = {}
    checked = 0
    for path in _task_files():
        text = path.read_text()
        checked += text.count("docker_container:")
        bad = offending_tasks(text)
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    assert checked >= 5, "expected the start/stop tasks of roles/common, stack and incident"
    assert found == {}, (
        "these docker_container tasks start or stop a container by name without comparisons: {'*': ignore} "
        "and may re-create it from its image alone: %s" % found
    )


def test_the_shared_start_and_stop_pass_the_option():
    # The one place every role's start/stop by name goes through (startup, service, restore,
    # maintenance, dr): roles/common start_one / stop_one.
    for name in ("start_one.yml", "stop_one.yml"):
        tasks = list(_tasks(yaml.safe_load((ROOT / "roles/common/tasks" / name).read_text())))
        modules = [t["community.docker.docker_container"] for t in tasks if "community.docker.docker_container" in t]
        assert len(modules) == 1, name
        assert modules[0]["comparisons"] == {"*": "ignore"}, name


BAD = """
- name: Start it
  community.docker.docker_container:
    name: x
    state: started
- name: Stop it in a block
  block:
    - name: Stop
      docker_container:
        name: x
        state: stopped
        comparisons: {env: ignore}
"""

GOOD = """
- name: Start it
  community.docker.docker_container:
    name: x
    state: started
    comparisons: {'*': ignore}
- name: Create it (converges to the given options)
  community.docker.docker_container:
    name: x
    image: img
    state: started
- name: Remove it
  community.docker.docker_container:
    name: x
    state: absent
"""


def test_the_check_finds_a_bad_sample():
    assert offending_tasks(BAD) == ["Start it", "Stop"]
    assert offending_tasks(GOOD) == []

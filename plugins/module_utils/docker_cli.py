# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one Docker CLI client of the collection's cores (inspect, exec, run, cp, streams).

Like community.docker's ``_common_cli.py`` (a client that builds ``docker``
command lines and runs them through the module's ``run_command``), but small:
the cores need a handful of verbs. Every command goes through a
:class:`~runner.CommandRunner`, so it is recorded for ``executed_commands`` and
fails with :class:`~runner.CommandError`.

The ``docker_cli`` option's default lives here, once: :data:`DEFAULT_CLI`,
:func:`docker_cli_option` (argument spec) and :func:`cli_path` (from params).

Plain Python 3.9 (no Ansible import).
"""

from __future__ import annotations

import json
import shlex

from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandRunner

DEFAULT_CLI = "docker"


def docker_cli_option():
    """The ``docker_cli`` entry of a module's argument spec."""
    return dict(type="str", default=DEFAULT_CLI)


def cli_path(params):
    """The docker CLI a module's params name (``docker_cli``), or ``docker``."""
    return (params or {}).get("docker_cli") or DEFAULT_CLI


def parse_inspect(out):
    """``docker inspect`` stdout -> {name: document} (names without the leading slash)."""
    try:
        items = json.loads(out or "[]")
    except ValueError:
        return {}
    result = {}
    for item in items if isinstance(items, list) else []:
        name = str(item.get("Name") or "").lstrip("/") if isinstance(item, dict) else ""
        if name:
            result[name] = item
    return result


def _env_args(env):
    out = []
    for key in sorted(env or {}):
        out += ["-e", "%s=%s" % (key, env[key])]
    return out


class DockerCli:
    """Builds and runs ``docker`` command lines through one :class:`~runner.CommandRunner`.

    ``runner``: a CommandRunner, or a ``run_command`` callable (wrapped in one).
    """

    def __init__(self, runner, docker_cli=DEFAULT_CLI):
        self.runner = CommandRunner.wrap(runner)
        self.cli = docker_cli or DEFAULT_CLI

    @property
    def commands(self):
        """Every command run so far (secret-free lines)."""
        return self.runner.commands

    # -- command lines -----------------------------------------------------------------
    def argv(self, args):
        return [self.cli] + [str(a) for a in args]

    def exec_argv(self, container, argv, user=None, env=None, interactive=False, workdir=None):
        """``docker exec [-i] [-u user] [-w dir] [-e K=V ...] <container> <argv...>``."""
        args = ["exec"]
        if interactive:
            args.append("-i")
        if user:
            args += ["-u", user]
        if workdir:
            args += ["-w", workdir]
        args += _env_args(env) + [container] + list(argv)
        return self.argv(args)

    def run_argv(
        self,
        image,
        argv=(),
        entrypoint=None,
        volumes=(),
        labels=(),
        user=None,
        network=None,
        interactive=False,
        env=None,
        name=None,
        remove=True,
        pull="never",
    ):
        """``docker run`` of a short-lived container; images are never pulled unless ``pull`` says so."""
        args = ["run"]
        if remove:
            args.append("--rm")
        if interactive:
            args.append("-i")
        if pull:
            args.append("--pull=%s" % pull)
        if name:
            args += ["--name", name]
        if network:
            args += ["--network", network]
        if user:
            args += ["--user", user]
        for label in labels:
            args += ["--label", label]
        for volume in volumes:
            args += ["-v", volume]
        args += _env_args(env)
        if entrypoint:
            args += ["--entrypoint", entrypoint]
        return self.argv(args + [image] + list(argv))

    # -- running -----------------------------------------------------------------------
    def call(self, args, check=True, ok_rcs=(0,), what=None, hint=None, data=None, env=None):
        """Run ``docker <args>``; ``(rc, stdout, stderr)``; CommandError when ``check`` and rc not in ``ok_rcs``."""
        return self.runner.run(self.argv(args), data=data, env=env, check=check, ok_rcs=ok_rcs, what=what, hint=hint)

    def inspect(self, name, kind="container"):
        """The inspect document of one object, or None when it does not exist (or the engine does not answer)."""
        rc, out, _err = self.call(["inspect", "--type", kind, name], check=False)
        if rc != 0:
            return None
        try:
            data = json.loads(out or "[]")
        except ValueError:
            return None
        return data[0] if isinstance(data, list) and data else None

    def inspect_many(self, names, kind="container"):
        """``(rc, {name: document}, stderr)`` for several objects; missing ones are absent from the dict."""
        rc, out, err = self.call(["inspect", "--type", kind] + list(names), check=False)
        return rc, parse_inspect(out), err

    def exec(self, container, argv, user=None, env=None, data=None, workdir=None, check=True, ok_rcs=(0,), what=None):
        cmd = self.exec_argv(container, argv, user=user, env=env, interactive=data is not None, workdir=workdir)
        return self.runner.run(cmd, data=data, check=check, ok_rcs=ok_rcs, what=what)

    def run(self, image, argv=(), check=True, ok_rcs=(0,), what=None, data=None, **options):
        """``docker run`` (see :meth:`run_argv` for ``options``)."""
        if data is not None:
            options["interactive"] = True
        return self.runner.run(self.run_argv(image, argv, **options), data=data, check=check, ok_rcs=ok_rcs, what=what)

    def cp(self, src, dst, check=True, what=None):
        """``docker cp src dst`` (either side may be ``container:path``)."""
        return self.call(["cp", src, dst], check=check, what=what or "copying %s to %s" % (src, dst))

    def image_exists(self, image):
        return self.call(["image", "inspect", image], check=False)[0] == 0

    # -- streams (never held in memory) ------------------------------------------------
    def to_file(self, cmd, path, ok_rcs=(0,), what=None):
        """Run the docker argv ``cmd`` with stdout streamed into the file ``path``."""
        return self.runner.shell("%s > %s" % (shlex.join(cmd), shlex.quote(path)), ok_rcs=ok_rcs, what=what)

    def from_file(self, cmd, path, ok_rcs=(0,), what=None):
        """Run the docker argv ``cmd`` with stdin streamed from the file ``path``."""
        return self.runner.shell("%s < %s" % (shlex.join(cmd), shlex.quote(path)), ok_rcs=ok_rcs, what=what)

    def pipe(self, cmd, into, ok_rcs=(0,), what=None):
        """Run the docker argv ``cmd`` piped into the argv ``into``; returns ``into``'s output."""
        return self.runner.shell("%s | %s" % (shlex.join(cmd), shlex.join(into)), ok_rcs=ok_rcs, what=what)

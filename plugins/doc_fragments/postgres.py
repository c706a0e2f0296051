# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # How a module reaches PostgreSQL: inside the database container (default
    # for the stack) or over TCP with a password kept in a 0600 passfile.
    DOCUMENTATION = r"""
options:
  container:
    description:
      - Name of the PostgreSQL container. The PostgreSQL client tools run inside it with
        C(docker exec -u <container_user>), so client and server versions match and the
        container's own local socket authentication is used (no password anywhere).
      - Mutually exclusive with O(login_host).
    type: str
  container_user:
    description: OS user the tools run as inside O(container).
    type: str
    default: postgres
  docker_cli:
    description: The docker command line client on the target host.
    type: str
    default: docker
  login_host:
    description:
      - Host of the PostgreSQL server when not using O(container). The client tools of the
        target host are used.
    type: str
  login_port:
    description: Port of the PostgreSQL server with O(login_host).
    type: int
    default: 5432
  login_user:
    description: Database role to connect as.
    type: str
    default: postgres
  login_password:
    description:
      - Password for O(login_user) with O(login_host). It is written to a private 0600
        passfile for the duration of the task (C(PGPASSFILE)); it never appears on a
        command line, in a process environment or in the output.
    type: str
  connect_timeout:
    description: Seconds to wait for a connection.
    type: int
    default: 10
"""

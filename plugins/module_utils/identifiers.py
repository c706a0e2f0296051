# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one rule for names: PostgreSQL identifiers and file-safe catalog names.

Every name the collection puts into SQL, a command line or a path is checked here,
and every SQL identifier is quoted here (like community.postgresql's
``pg_quote_identifier``: validate the structure, then always quote each part).

* A **name** (database, role, schema, table, column) starts with a letter or ``_``
  and continues with letters, digits, ``_``, ``$`` or ``-``; at most 63 characters
  (PostgreSQL's NAMEDATALEN - 1). ``my-db`` and ``ner11_db`` are names; ``1db``,
  ``a b``, ``a;b`` and ``"x"`` are not. Names are case-sensitive: they are always
  quoted, so ``MyDb`` means exactly ``"MyDb"``.
* A **table** is ``name`` or ``schema.name`` (``public.t`` and ``t`` are both valid).
  An unqualified table is looked up on the server's ``search_path``, except where
  a caller asks for ``split_table(..., default_schema="public")``.
* A **file name** (backup ids, record files) starts with a letter or digit and
  continues with letters, digits, ``.``, ``_`` or ``-``; at most 128 characters;
  never contains ``..``.
* A **container name** follows Docker's rule (the file-name characters, ``..`` allowed);
  a **project name** follows Compose's (lowercase letters, digits, ``_`` and ``-``, at most 63).

Plain Python 3.9+, no Ansible import.
"""

from __future__ import annotations

import re

NAME_MAX = 63
FILE_NAME_MAX = 128
_NAME = r"[A-Za-z_][A-Za-z0-9_$-]{0,%d}" % (NAME_MAX - 1)
_NAME_RE = re.compile(_NAME)
_TABLE_RE = re.compile(r"(?:(%s)\.)?(%s)" % (_NAME, _NAME))
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,%d}" % (FILE_NAME_MAX - 1))
_CONTAINER_NAME_RE = _FILE_NAME_RE
_PROJECT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,%d}" % (NAME_MAX - 1))
# host:port of a peer host: a DNS name or IPv4 address, or a bracketed IPv6 address.
_HOST_PORT_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})")
NAME_RULE = "start with a letter or '_', then letters, digits, '_', '$' or '-', at most %d characters" % NAME_MAX
FILE_NAME_RULE = "letters, digits, '.', '_' and '-' only (no '/', no '..', at most %d characters)" % FILE_NAME_MAX


class IdentifierError(ValueError):
    """A name breaks the rule; the message names the option, the value and the rule."""


def is_name(value):
    """True when ``value`` is a valid database / role / schema / table / column name."""
    return isinstance(value, str) and bool(_NAME_RE.fullmatch(value))


def check_name(value, what="name"):
    """``value`` when it is a valid name, else IdentifierError naming ``what`` and the rule."""
    if not is_name(value):
        raise IdentifierError("%s %r is not a valid PostgreSQL identifier: %s" % (what, value, NAME_RULE))
    return value


def is_table(value):
    """True for ``name`` or ``schema.name``."""
    return isinstance(value, str) and bool(_TABLE_RE.fullmatch(value))


def check_table(value, what="table"):
    """``value`` when it is ``name`` or ``schema.name``, else IdentifierError."""
    if not is_table(value):
        raise IdentifierError("%s %r is not a valid [schema.]table name: each part must %s" % (what, value, NAME_RULE))
    return value


def split_table(value, default_schema=None, what="table"):
    """``'public.t'`` -> ``('public', 't')``; ``'t'`` -> ``(default_schema, 't')``."""
    match = _TABLE_RE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        check_table(value, what)
    return match.group(1) or default_schema, match.group(2)


def quote_name(value):
    """One quoted SQL identifier: ``my-db`` -> ``"my-db"`` (embedded quotes doubled)."""
    return '"%s"' % str(value).replace('"', '""')


def quote_table(value, default_schema=None, what="table"):
    """A validated ``[schema.]table`` as a quoted SQL identifier: ``public.t`` -> ``"public"."t"``."""
    schema, table = split_table(value, default_schema, what)
    if schema is None:
        return quote_name(table)
    return "%s.%s" % (quote_name(schema), quote_name(table))


def quote_literal(value):
    """A SQL string literal (standard_conforming_strings, always on since PostgreSQL 9.1)."""
    return "'%s'" % str(value).replace("'", "''")


def is_file_name(value):
    return isinstance(value, str) and bool(_FILE_NAME_RE.fullmatch(value)) and ".." not in value


def check_file_name(value, what="name"):
    """``value`` when it is safe as one path component (backup ids, record files), else IdentifierError."""
    if not is_file_name(value):
        raise IdentifierError("invalid %s %r: use %s" % (what, value, FILE_NAME_RULE))
    return value


def is_container_name(value):
    """Docker's rule for container names (letters, digits, '.', '_', '-'; a letter or digit first)."""
    return isinstance(value, str) and bool(_CONTAINER_NAME_RE.fullmatch(value))


def is_project_name(value):
    """Compose's rule for project names (lowercase letters, digits, '_', '-'; at most 63)."""
    return isinstance(value, str) and bool(_PROJECT_NAME_RE.fullmatch(value))


def is_host_port(value):
    """host:port with a port in 1..65535 (a DNS name, an IPv4 address or a bracketed IPv6 address)."""
    match = _HOST_PORT_RE.fullmatch(value) if isinstance(value, str) else None
    return bool(match) and 1 <= int(match.group(2)) <= 65535

"""A stand-in for a host's Python (bench/fleet_scale.py ``standin`` variant): the controller's own cost.

On this one machine every inventory host of the fleet bench is an alias of localhost, so each
host's module work (Python start-up, the module's imports, its checks) runs on the controller's
two cores as well, and a 50-host run measures mostly that. To measure what the controller itself
spends per host (templating the task, building the module payload, the worker process, the
connection, reading the result), this interpreter stands in for the host's Python:

* it reads what Ansible sends (with pipelining: the whole AnsiballZ payload on stdin);
* the first time a payload is seen it runs the REAL interpreter with it and keeps the output when
  the run succeeded; every later identical payload gets that recorded output back at once;
* payloads are compared without the date stamps Ansible writes into each one (the payload's own
  and its zip members', rebuilt on every run), so every host of a group that runs the same module
  with the same arguments shares one recording, from one run to the next;
* a plain ``python -S -c <program>`` (the ledger's per-host append, run by its action plugin)
  runs inside the stand-in, which is such a Python already: the line is written for real, without
  starting a second interpreter per host;
* anything else (a payload never seen) runs for real.

It is a bench instrument only, named as such in the output; correctness is proven on the real
fleet (tests/integration/test_fleet.py). Standard library only: it starts with ``python -S``.
"""

import os
import sys

# Only ``os`` and ``sys`` at start-up: the stand-in stands in for a host's Python, whose start-up
# runs on the host, not on the controller. Everything else is imported when a payload is first
# seen (see ``main``): a replay of a known payload or the ledger's program imports nothing more.
DATE_STAMP = rb"date_time=datetime\.datetime\([^)]*\)\)?,"
ZIP_DATA = rb"zip_data='([A-Za-z0-9+/=]+)'"


def _zip_members(match):
    """The payload's zip as its members' names and checksums: the zip itself carries the build time."""
    import base64
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(match.group(1)))) as zf:
            members = sorted((i.filename, i.CRC, i.file_size) for i in zf.infolist())
    except (ValueError, zipfile.BadZipFile):
        return match.group(0)
    return b"zip_members=" + repr(members).encode()


def payload_key(argv, data):
    """The recording's key: the arguments and the payload without its date stamps (the one Ansible
    writes into the payload and those of the zip's members, rebuilt on every run)."""
    import hashlib
    import re

    data = re.sub(ZIP_DATA, _zip_members, re.sub(DATE_STAMP, b"", data))
    return hashlib.sha256(repr(argv).encode() + b"\0" + data).hexdigest()


def run_program(argv):
    """Run ``python -S -c <program> args...`` here; its exit status."""
    sys.argv = ["-c"] + argv[3:]
    try:
        exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 - the host's own program
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def cached_key(cache, argv, data):
    """``payload_key`` through a memo keyed by the exact bytes: within one run every host that runs
    the same module with the same arguments sends the same bytes (Ansible builds the module's zip
    once per run), so only the first of them pays for unpacking the zip."""
    try:
        from _sha256 import sha256  # hashlib's C implementation without hashlib's imports (Python 3.11)
    except ImportError:  # Python 3.12+ names it _sha2
        from hashlib import sha256

    memo = os.path.join(cache, "exact-" + sha256(repr(argv).encode() + b"\0" + data).hexdigest())
    try:
        with open(memo) as fh:
            return fh.read()
    except FileNotFoundError:
        pass
    key = payload_key(argv, data)
    tmp = "%s.%d.tmp" % (memo, os.getpid())
    with open(tmp, "w") as fh:
        fh.write(key)
    os.replace(tmp, memo)
    return key


def main(real, cache):
    argv = sys.argv[1:]
    if argv[:2] == ["-S", "-c"] and len(argv) > 2:
        return run_program(argv)
    data = sys.stdin.buffer.read()
    path = os.path.join(cache, cached_key(cache, argv, data))
    try:
        with open(path, "rb") as fh:
            sys.stdout.buffer.write(fh.read())
        return 0
    except FileNotFoundError:
        pass
    import subprocess  # noqa: S404 - runs the real interpreter with the same payload

    proc = subprocess.run([real] + argv, input=data, capture_output=True, check=False)  # noqa: S603
    if proc.returncode == 0:
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "wb") as fh:
            fh.write(proc.stdout)
        os.replace(tmp, path)
    sys.stdout.buffer.write(proc.stdout)
    sys.stderr.buffer.write(proc.stderr)
    return proc.returncode


def write_wrapper(path, real, cache):
    """An executable interpreter file at ``path`` that runs ``main(real, cache)``."""
    os.makedirs(cache, exist_ok=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    with open(path, "w") as fh:
        fh.write(
            "#!%s -S\nimport sys\nsys.path.insert(0, %r)\nimport standin_interpreter\n"
            "sys.exit(standin_interpreter.main(%r, %r))\n" % (sys.executable, here, real, cache)
        )
    os.chmod(path, 0o700)  # executable by the bench (root) only
    return path

"""runner.CommandRunner and docker_cli.DockerCli: real subprocesses; a fake docker CLI script records argv."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import stat

import pytest
from local_runner import run_command

from ansible_collections.ner11.ops.plugins.module_utils import docker_cli as dc
from ansible_collections.ner11.ops.plugins.module_utils import pgexec
from ansible_collections.ner11.ops.plugins.module_utils import runner as rn


def test_last_line():
    assert rn.last_line("a\n\n b \n\n") == "b"
    assert rn.last_line("") == "no output"
    assert rn.last_line(None) == "no output"
    assert pgexec.last_line is rn.last_line


def test_run_records_and_returns_output():
    r = rn.CommandRunner(run_command)
    rc, out, err = r.run(["sh", "-c", "echo out; echo err >&2"])
    assert (rc, out, err) == (0, "out\n", "err\n")
    assert r.commands == ["sh -c 'echo out; echo err >&2'"]


def test_run_passes_stdin_and_env():
    r = rn.CommandRunner(run_command)
    _rc, out, _err = r.run(["sh", "-c", 'cat; echo "$NER11_X"'], data="in", env={"NER11_X": "y"})
    assert out == "in\ny\n"


def test_failure_shape_and_redaction():
    r = rn.CommandRunner(run_command, secrets=["s3cret"])
    with pytest.raises(rn.CommandError) as info:
        r.run(["sh", "-c", "echo first >&2; echo 'bad s3cret' >&2; exit 3", "s3cret"], what="the probe", hint="fix it")
    exc = info.value
    assert exc.rc == 3
    assert exc.stderr_tail == "bad ********"
    assert "s3cret" not in str(exc) and "s3cret" not in " ".join(exc.argv)
    assert str(exc) == "the probe failed (rc=3): bad ********; fix it"
    assert "s3cret" not in r.commands[0] and r.commands[0].endswith(rn.REDACTED)


def test_unchecked_and_ok_rcs():
    r = rn.CommandRunner(run_command)
    assert r.run(["sh", "-c", "exit 1"], check=False)[0] == 1
    assert r.run(["sh", "-c", "exit 1"], ok_rcs=(0, 1))[0] == 1
    with pytest.raises(rn.CommandError, match=r"^sh -c 'exit 2' failed \(rc=2\): no output$"):
        r.run(["sh", "-c", "exit 2"])


def test_shell_pipefail_and_display():
    r = rn.CommandRunner(run_command)
    r.add_secret("pw")
    r.add_secret("")
    _rc, out, _err = r.shell("echo a | tr a b")
    assert out == "b\n"
    with pytest.raises(rn.CommandError) as info:
        r.shell("false | cat", what="a pipe")
    assert info.value.rc == 1 and str(info.value).startswith("a pipe failed (rc=1)")
    r.run(["echo", "pw"], display="echo <the password file>")
    assert r.commands == ["echo a | tr a b", "false | cat", "echo <the password file>"]


def test_wrap():
    r = rn.CommandRunner(run_command)
    assert rn.CommandRunner.wrap(r) is r
    assert isinstance(rn.CommandRunner.wrap(run_command), rn.CommandRunner)
    with pytest.raises(TypeError):
        rn.CommandRunner(r)


def test_error_of_a_shell_line():
    exc = rn.CommandError("echo x | false", 1, "", "")
    assert exc.argv == ["echo x | false"] and exc.stderr_tail == "no output"


# -- DockerCli with a fake CLI: a script that logs its argv and answers like docker ------------------
FAKE = r"""#!/bin/sh
printf '%s\n' "$*" >> "$LOG"
case "$1" in
  inspect)
    case "$4" in
      missing) echo "Error: No such object: missing" >&2; exit 1;;
      garbage) echo "not json"; exit 0;;
    esac
    if [ "$#" -gt 4 ]; then echo '[{"Name": "/a", "State": {"Running": true}}, {"Name": "/b"}]'; echo "Error: No such container: c" >&2; exit 1; fi
    echo '[{"Name": "/'"$4"'", "State": {"Running": true}}]';;
  image) [ "$3" = present ];;
  exec|run) shift; cat;;
  *) exit 0;;
esac
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    cli = tmp_path / "docker"
    cli.write_text(FAKE)
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "log"
    monkeypatch.setenv("LOG", str(log))
    client = dc.DockerCli(run_command, str(cli))
    client.log = log
    return client


def _log(client):
    return client.log.read_text().splitlines()


def test_cli_defaults_in_one_place():
    assert dc.cli_path({}) == "docker" and dc.cli_path(None) == "docker"
    assert dc.cli_path({"docker_cli": None}) == "docker" and dc.cli_path({"docker_cli": "/x/docker"}) == "/x/docker"
    assert dc.docker_cli_option() == {"type": "str", "default": "docker"}
    assert dc.DockerCli(run_command, None).cli == "docker"


def test_inspect(fake):
    assert fake.inspect("web")["Name"] == "/web"
    assert fake.inspect("missing") is None
    assert fake.inspect("garbage") is None
    rc, found, err = fake.inspect_many(["a", "b", "c"])
    assert rc == 1 and sorted(found) == ["a", "b"] and "No such container" in err
    assert _log(fake)[0] == "inspect --type container web"
    assert fake.commands[0].endswith("docker inspect --type container web")


def test_exec_run_cp(fake):
    _rc, out, _err = fake.exec("pg", ["psql", "-c", "x"], user="postgres", env={"B": "2", "A": "1"}, data="sql", workdir="/w")
    assert out == "sql\n"
    assert _log(fake)[-1] == "exec -i -u postgres -w /w -e A=1 -e B=2 pg psql -c x"
    fake.run("img", ["tar", "-cf", "-"], entrypoint="tar", volumes=["v:/src:ro"], labels=["k=v"], user="0:0", network="none")
    assert (
        _log(fake)[-1]
        == "run --rm --pull=never --network none --user 0:0 --label k=v -v v:/src:ro --entrypoint tar img tar -cf -"
    )
    fake.run("img", data="x", name="n", env={"E": "1"}, remove=False, pull=None)
    assert _log(fake)[-1] == "run -i --name n -e E=1 img"
    fake.cp("c:/a", "/tmp/b")
    assert _log(fake)[-1] == "cp c:/a /tmp/b"
    assert fake.image_exists("present") and not fake.image_exists("absent")


def test_streams(fake, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("payload")
    dst = tmp_path / "out file.txt"
    fake.from_file(fake.exec_argv("c", ["cat"], interactive=True), str(src))
    fake.to_file(fake.exec_argv("c", ["echo"]), str(dst))
    assert os.path.exists(dst)
    _rc, out, _err = fake.pipe(
        fake.argv(["inspect", "--type", "volume", "v"]), ["python3", "-c", "import json,sys; print(len(json.load(sys.stdin)))"]
    )
    assert out == "1\n"
    assert fake.commands[1].endswith("'%s'" % dst)
    with pytest.raises(rn.CommandError, match="reading"):
        fake.pipe(fake.argv(["inspect", "--type", "volume", "missing"]), ["cat"], what="reading")


def test_call_failure_is_a_command_error(fake):
    with pytest.raises(rn.CommandError) as info:
        fake.call(["inspect", "--type", "container", "missing"], what="inspecting missing", hint="deploy the stack")
    assert str(info.value) == "inspecting missing failed (rc=1): Error: No such object: missing; deploy the stack"


def test_parse_inspect():
    assert dc.parse_inspect("not json") == {}
    assert dc.parse_inspect('{"Name": "x"}') == {}
    assert dc.parse_inspect(json.dumps([{"Name": "/x"}, {"Name": ""}, "s"])) == {"x": {"Name": "/x"}}


def test_fail_json_in_a_worker_thread_raises_instead_of_printing_a_second_result():
    # A stand-in for AnsibleModule's exit path (prints a result, exits): what run_command calls
    # when a command cannot start. Only the main thread may print; a worker's call raises there.
    out = io.StringIO()

    class Module:
        def fail_json(self, msg=None, **kwargs):
            out.write(json.dumps(dict(kwargs, msg=msg, failed=True)) + "\n")
            raise SystemExit(1)

    module = rn.main_thread_failures(Module())
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        future = pool.submit(module.fail_json, msg="[Errno 11] Resource temporarily unavailable", rc=11)
        assert isinstance(future.exception(), rn.ThreadFailure)
        assert str(future.exception()) == "[Errno 11] Resource temporarily unavailable"
    assert out.getvalue() == ""
    with pytest.raises(SystemExit):
        module.fail_json(msg="the one result")
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["the one result"]

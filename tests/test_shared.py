"""The shared tier (nbbuild/shared.py) on a real S3 API server (moto, on 127.0.0.1) and on a shared
directory: values and packs of rows go up whole and come back only when the team key verifies."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

import pytest

from nbbuild.store import serialisation as hashing, shared
from nbbuild.errors import SharedUnreachable
from nbbuild.store.signing import Signer
from nbbuild.store.store import Store
from tests.s3server import S3Server
from tests.waiting import wait_until

TEAM = Signer(b"t" * 32)
OTHER_TEAM = Signer(b"o" * 32)


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(params=["dir", "s3"])
def location(request, tmp_path) -> tuple[str, dict]:
    if request.param == "dir":
        return str(tmp_path / "team"), {}
    server = request.getfixturevalue("s3")
    return f"s3://{server.bucket()}/nbbuild", {"client_kwargs": {"endpoint_url": server.endpoint},
                                               "key": "testing", "secret": "testing", "skip_instance_cache": True}


def tier(location, signer=TEAM, **kw) -> shared.SharedTier:
    url, options = location
    return shared.SharedTier(url, signer, **kw, **options)


def stored(tmp_path, value) -> tuple[Store, str]:
    store = Store(tmp_path / "local", signer=Signer(b"u" * 32))
    ser = hashing.pickle_value(value)
    assert store.put_value(ser) is None
    store.flush()
    return store, ser.digest


def local_source(store: Store, digest: str):
    sealed, filename = store.table.get(f"v:{digest}")
    return os.path.join(store.path, filename) if filename else sealed


@pytest.mark.parametrize("value", [{"small": [1, 2, 3]}, bytes(range(256)) * 4096],
                         ids=["inline", "value file"])
def test_a_value_goes_up_and_comes_back_checked(location, tmp_path, value):
    store, digest = stored(tmp_path, value)
    up = tier(location)
    up.put_value(digest, shared.value_object_bytes(digest, local_source(store, digest), TEAM))
    meta, buffers = tier(location).fetch_value(digest, str(tmp_path / "down"))
    assert hashing.unpickle(meta, buffers) == value
    assert tier(location).fetch_value("0" * 32, str(tmp_path / "none")) is None


@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_a_value_another_team_signed_is_a_miss_with_one_warning(location, tmp_path, caplog):
    store, digest = stored(tmp_path, [1, 2])
    theirs = tier(location, OTHER_TEAM)
    theirs.put_value(digest, shared.value_object_bytes(digest, local_source(store, digest), OTHER_TEAM))
    ours = tier(location)
    with caplog.at_level(logging.WARNING, logger="nbbuild"):
        assert ours.fetch_value(digest, str(tmp_path / "down")) is None
        assert ours.fetch_value(digest, str(tmp_path / "down")) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"nbbuild: the value {digest} in the shared store {location[0]} is not used: it was signed by another key"]
    assert not os.path.exists(tmp_path / "down")


def test_rows_come_back_in_packs_and_each_pack_once(location):
    up = tier(location)
    first = up.put_rows([("t:a#1", b"trace a"), ("v:" + "1" * 32, b"")])
    second = up.put_rows([("a:a#x", b"\0attached")])
    reader = tier(location)
    read, rows = reader.rows(set())
    assert read == [first, second]
    assert rows == [("t:a#1", b"trace a"), ("v:" + "1" * 32, b""), ("a:a#x", b"\0attached")]
    assert reader.rows(set(read)) == ([], [])


@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_a_tampered_pack_is_not_used(location, caplog):
    up = tier(location)
    name = up.put_rows([("t:a#1", b"trace a")])
    good = up.put_rows([("t:b#1", b"trace b")])
    path = f"{up.root}/p/{name}"
    blob = bytearray(up.fs.cat(path))
    blob[-1] ^= 1
    up.fs.pipe(path, bytes(blob))
    with caplog.at_level(logging.WARNING, logger="nbbuild"):
        read, rows = tier(location).rows(set())
    assert rows == [("t:b#1", b"trace b")] and read == [name, good]
    assert "do not verify under the team key" in caplog.text


def dead_endpoint() -> str:
    """An S3 endpoint where nothing listens (a port that was free a moment ago)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_unreachable_server_is_one_line():
    url = "s3://gone/x"
    options = {"client_kwargs": {"endpoint_url": dead_endpoint()}, "key": "testing", "secret": "testing",
               "skip_instance_cache": True, "retries": 0, "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    up = shared.SharedTier(url, TEAM, **options)
    with pytest.raises(SharedUnreachable) as e:
        up.put_rows([("t:a#1", b"x")])
    assert str(e.value).startswith(f"the shared store {url} could not be reached (uploading traces: ")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- two machines, one shared tier

# Two rules every "machine" of these tests defines (on the Build `b`, noting runs in `ran`)
RULES = '''
@b.rule
def raw():
    ran.append("raw")
    n = int(os.environ.get("N", "1000"))
    if os.environ.get("ARRAY"):
        import numpy
        return numpy.arange(n, dtype="int64")
    return list(range(n))

@b.rule
def total():
    values = raw()
    ran.append("total")
    return int(sum(values))
'''

MACHINE = r'''
import json, os, sys
import nbbuild
ran = []
b = nbbuild.Build(sys.argv[1])
''' + RULES + r'''
value, = b.build(total)
b.close()
print(json.dumps({"ran": ran, "value": value}))
'''


def machine_process(tmp_path, name: str, env: dict) -> dict:
    """One machine in a process of its own, running MACHINE (the rules of `machine`)."""
    import json
    import subprocess
    import sys
    script = tmp_path / "machine.py"
    script.write_text(MACHINE)
    home = tmp_path / name
    out = subprocess.run([sys.executable, str(script), str(home / "store")], capture_output=True, text=True,
                         env={**os.environ, **env, "XDG_CONFIG_HOME": str(home / "config")}, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@contextlib.contextmanager
def on_machine(tmp_path, name: str, env: dict, **extra) -> Iterator[tuple[Any, dict, list[str]]]:
    """One machine, in this process: its own local store and its own user key (XDG_CONFIG_HOME),
    the team's key and shared tier, the rules of MACHINE defined on a Build: (the Build, the
    rules' scope, what nbbuild warned: its "stderr"). Closed at the end (uploads waited for)."""
    import nbbuild
    home = tmp_path / name
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())       # type: ignore[method-assign]
    log = logging.getLogger("nbbuild")
    with pytest.MonkeyPatch.context() as m:
        for var in ("N", "ARRAY", "NBBUILD_SHARED_READONLY"):
            m.delenv(var, raising=False)
        for var, value in {**env, "XDG_CONFIG_HOME": str(home / "config"), **extra}.items():
            m.setenv(var, value)
        log.addHandler(handler)
        try:
            b = nbbuild.Build(home / "store", progress=False)
            scope = {"b": b, "ran": [], "os": os}
            exec(RULES, scope)
            yield b, scope, said
            b.close()
        finally:
            log.removeHandler(handler)


def machine(tmp_path, name: str, env: dict, target: str = "total", **extra) -> dict:
    """One machine (on_machine) that builds `target`: what ran, the value, what it warned."""
    with on_machine(tmp_path, name, env, **extra) as (b, scope, said):
        value, = b.build(scope[target])
    return {"ran": scope["ran"], "value": value, "stderr": "\n".join(said)}


def s3_env(endpoint: str) -> dict[str, str]:
    """How a user points s3fs at an S3 API server: botocore's own variables."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def team(tmp_path, location) -> dict:
    from nbbuild.store.signing import new_key_file
    key = tmp_path / "team.key"
    new_key_file(str(key))
    url, options = location
    env = {"NBBUILD_SHARED": url, "NBBUILD_TEAM_KEY": str(key), "PYTHONPATH": os.getcwd()}
    if url.startswith("s3://"):
        env |= s3_env(options["client_kwargs"]["endpoint_url"])
    return env


def test_a_second_machine_runs_nothing(tmp_path, team):
    first = machine(tmp_path, "one", team)
    assert first["ran"] == ["raw", "total"]
    second = machine(tmp_path, "two", team)
    assert second["ran"] == [] and second["value"] == first["value"]
    third = machine(tmp_path, "three", team, N="10")
    assert third["ran"] == ["raw", "total"] and third["value"] == 45


def test_status_and_why_on_another_machine_look_in_the_shared_tier_and_run_nothing(tmp_path, team):
    machine(tmp_path, "one", team)
    with on_machine(tmp_path, "two", team) as (b, scope, said):
        total = scope["total"]
        assert [b.status(total).state, b.why(total)] == ["up to date", "total() is up to date"]
        assert b.plan(total) == [] and scope["ran"] == [] and said == []
    with on_machine(tmp_path, "three", team, N="10") as (b, scope, said):
        assert b.status(scope["total"]).state == "stale" and "N" in b.why(scope["total"])
        assert scope["ran"] == []


@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_a_read_only_machine_uploads_nothing(tmp_path, team):
    assert machine(tmp_path, "ci", team, NBBUILD_SHARED_READONLY="1")["ran"] == ["raw", "total"]
    assert machine(tmp_path, "two", team)["ran"] == ["raw", "total"]


@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_without_a_team_key_the_shared_tier_is_refused_in_one_line(tmp_path, team):
    import subprocess
    import sys
    env = {k: v for k, v in team.items() if k != "NBBUILD_TEAM_KEY"}
    out = subprocess.run([sys.executable, "-c", "import nbbuild; nbbuild.Build('s')"], cwd=tmp_path, text=True,
                         capture_output=True, env={**{k: v for k, v in os.environ.items() if k != "NBBUILD_TEAM_KEY"}, **env})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"nbbuild.errors.SharedStoreError: the shared store {team['NBBUILD_SHARED']} needs a team key: set "
        "NBBUILD_TEAM_KEY to a key file (make one with `nbbuild store team-key FILE` and give it to your team)")


def test_a_tier_that_stops_answering_costs_one_warning_and_uploads_later(tmp_path, s3):
    from nbbuild.store.signing import new_key_file
    new_key_file(str(tmp_path / "team.key"))
    env = {"NBBUILD_TEAM_KEY": str(tmp_path / "team.key"), "NBBUILD_SHARED": "s3://gone/x", **s3_env(dead_endpoint())}
    cut_off = machine(tmp_path, "one", env)
    assert cut_off["ran"] == ["raw", "total"]
    warnings = cut_off["stderr"].splitlines()
    assert len(warnings) == 1 and "could not be reached" in warnings[0] and "goes on with the local store" in warnings[0], cut_off["stderr"]
    back = {**env, "NBBUILD_SHARED": f"s3://{s3.bucket()}/x", **s3_env(s3.endpoint)}
    assert machine(tmp_path, "one", back)["ran"] == []        # its own store: it uploads what it kept back
    assert machine(tmp_path, "two", back)["ran"] == []


def test_a_machine_killed_mid_upload_leaves_nothing_partial_and_uploads_later(tmp_path, s3):
    import signal
    import subprocess
    import sys
    from nbbuild.store.signing import new_key_file
    new_key_file(str(tmp_path / "team.key"))
    bucket = s3.bucket()
    env = {"NBBUILD_TEAM_KEY": str(tmp_path / "team.key"), "PYTHONPATH": os.getcwd(),
           "NBBUILD_SHARED": f"s3://{bucket}/x", **s3_env(s3.endpoint), "ARRAY": "1", "N": str(1_500_000),
           "FSSPEC_S3_DEFAULT_BLOCK_SIZE": str(5 << 20)}     # 12 MB in three parts: a multipart upload
    script = tmp_path / "machine.py"
    script.write_text(MACHINE)
    home = tmp_path / "one"
    proc = subprocess.Popen([sys.executable, str(script), str(home / "store")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **env, "XDG_CONFIG_HOME": str(home / "config")})
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint}, key="testing", secret="testing",
                           skip_instance_cache=True)
    def begun() -> bool:
        assert proc.poll() is None, proc.communicate()
        return bool(fs.list_multipart_uploads(bucket))
    wait_until(begun, "the upload of the value to begin", timeout=120, interval=0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fs.invalidate_cache()
    assert fs.find(f"{bucket}/x") == []              # nothing partial, and no trace without its value
    assert machine_process(tmp_path, "one", env)["ran"] == []   # its store kept the rows it had not uploaded
    assert machine_process(tmp_path, "two", env)["ran"] == []


@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_a_notebook_run_on_one_machine_is_restored_in_a_kernel_on_another(tmp_path, team, execute_notebook, monkeypatch):
    import nbformat
    from tests.test_cli import RULES, calls, nbbuild_cmd, write
    one = write(tmp_path / "one", RULES).parent
    env = {**team, "XDG_CONFIG_HOME": str(tmp_path / "one-config")}
    first = nbbuild_cmd("run", "nb.ipynb", cwd=one, env=env)
    assert first.returncode == 0, first.stderr
    assert calls(one) == ["raw", "clean", "other"]
    two = write(tmp_path / "two", RULES).parent
    for name, value in {**team, "XDG_CONFIG_HOME": str(tmp_path / "two-config")}.items():
        monkeypatch.setenv(name, value)
    nb = execute_notebook(nbformat.read(str(two / "nb.ipynb"), as_version=4), two)
    assert calls(two) == []
    printed = [o.get("text") for o in nb.cells[5].outputs if o.output_type == "stream"]
    assert printed == ["[0, 2, 4]\n"]


# ---------------------------------------------------------------- eviction in the shared tier

@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_gc_keeps_the_shared_tier_within_its_quota_costly_values_last_and_merges_packs(location, tmp_path):
    from nbbuild.store import shared_eviction
    from nbbuild.engine.trace import Trace
    up = tier(location)
    sizes = {}
    for name, seconds, n in [("cheap", 0.01, 60_000), ("dear", 100.0, 60_001), ("small", 0.01, 10)]:
        store, digest = stored(tmp_path / name, list(range(n)))
        up.put_value(digest, shared.value_object_bytes(digest, local_source(store, digest), TEAM))
        trace = Trace(name, name, "", name, "v1", (), digest, seconds)
        up.put_rows([(f"t:{name}#{trace.ident}", trace.encode()), ("v:" + digest, b"")])
        sizes[name] = (digest, up.values()[digest][0])
    before = shared_eviction.survey(up)
    assert len(before.packs) == 3 and before.traces == 3
    quota = before.volume - sizes["small"][1]            # one of the big ones must go
    assert shared_eviction.collect(up, quota, grace=0) == (1, sizes["cheap"][1], 3)
    after = shared_eviction.survey(up)
    assert set(after.values) == {sizes["dear"][0], sizes["small"][0]}
    assert len(after.packs) == 1 and after.traces == 3       # the cheap one's trace stays: a miss, then a run
    assert ("v:" + sizes["cheap"][0], b"") not in after.rows
    assert shared_eviction.collect(up, None) == (0, 0, 0)    # one pack and no quota: nothing to do


# ---------------------------------------------------------------- the command and the magic

@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_the_command_makes_a_team_key_and_looks_after_the_shared_tier(tmp_path, team):
    from tests.test_cli import nbbuild_cmd
    made = nbbuild_cmd("store", "team-key", "k", cwd=tmp_path)
    assert made.returncode == 0 and (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    again = nbbuild_cmd("store", "team-key", "k", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr == "nbbuild store: k exists already: a team key is made once, then copied to each member\n"
    machine(tmp_path, "one", team)
    machine(tmp_path, "two", team, N="5")
    info = nbbuild_cmd("store", "info", "--shared", cwd=tmp_path, env=team)
    assert info.returncode == 0, info.stderr
    assert info.stdout.splitlines()[2] == "traces   4 in 2 packs"
    gc = nbbuild_cmd("store", "gc", "--shared", "--quota", "1 kB", cwd=tmp_path, env=team)
    assert gc.returncode == 0, gc.stderr
    assert gc.stdout.splitlines()[0] == "evicted 0 values (0 B); merged 2 packs into one"   # all within the grace hour
    assert gc.stdout.splitlines()[3] == "traces   4 in 1 packs"
    no_key = nbbuild_cmd("store", "info", "--shared", cwd=tmp_path, env={**team, "NBBUILD_TEAM_KEY": ""})
    assert no_key.returncode == 2 and no_key.stderr.startswith("nbbuild store: the shared store ") and "needs a team key" in no_key.stderr


def test_a_tampered_value_is_a_miss_with_one_warning_its_task_runs_and_puts_it_right(tmp_path, team, location):
    big = {"ARRAY": "1", "N": "100000"}           # 800 kB: an object of its own, not in a pack
    machine(tmp_path, "one", team, "raw", **big)
    up = tier(location)
    assert len(up.values()) == 1
    for digest in up.values():
        path = up.value_path(digest)
        blob = bytearray(up.fs.cat(path))
        blob[-1] ^= 1
        up.fs.pipe(path, bytes(blob))
    second = machine(tmp_path, "two", team, "raw", **big)
    assert second["ran"] == ["raw"]
    assert sorted(second["stderr"].splitlines()) == sorted(
        f"nbbuild: the value {digest} in the shared store {location[0]} is not used: its content does not match "
        "its hash" for digest in up.values())
    third = machine(tmp_path, "three", team, "raw", **big)    # the second machine put it right again
    assert third["ran"] == [] and third["stderr"] == ""


def team_location(team: dict) -> tuple[str, dict]:
    return team["NBBUILD_SHARED"], {}


@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_two_machines_uploading_the_same_values_at_once_leave_one_object_each(tmp_path, team):
    import subprocess
    import sys
    script = tmp_path / "machine.py"
    script.write_text(MACHINE)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / name / "store")], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, **team, "XDG_CONFIG_HOME": str(tmp_path / name / "config"),
                                   "ARRAY": "1", "N": "100000"})
             for name in ("one", "two")]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "nbbuild" not in err, err
    up = tier(team_location(team))
    assert len(up.values()) == 1                      # raw's array (total's sum is small: it goes in packs)
    assert machine_process(tmp_path, "three", {**team, "ARRAY": "1", "N": "100000"})["ran"] == []


@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_the_magic_puts_a_shared_tier_behind_the_notebooks_store(tmp_path, team, monkeypatch):
    from IPython.core.error import UsageError
    from tests.shells import fresh_shell
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NBBUILD_TEAM_KEY", team["NBBUILD_TEAM_KEY"])
    monkeypatch.delenv("NBBUILD_SHARED", raising=False)
    shell = fresh_shell()
    shell.run_line_magic("load_ext", "nbbuild")
    try:
        with pytest.raises(UsageError, match="--shared-readonly goes with --shared URL"):
            shell.run_line_magic("nbbuild", "store --shared-readonly")
        shell.run_line_magic("nbbuild", f"store --shared {team['NBBUILD_SHARED']} --shared-readonly")
        assert shell._nbbuild_state.build.shared == team["NBBUILD_SHARED"]
        monkeypatch.delenv("NBBUILD_TEAM_KEY")
        with pytest.raises(UsageError, match="^%nbbuild store: the shared store .* needs a team key"):
            shell.run_line_magic("nbbuild", "store --shared /elsewhere")
        assert shell._nbbuild_state.build.shared == team["NBBUILD_SHARED"]      # unchanged
    finally:
        shell._nbbuild_state.build.close()
        shell.run_line_magic("unload_ext", "nbbuild")


@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_a_damaged_local_value_is_not_uploaded_its_trace_is(tmp_path, location, caplog):
    from nbbuild.engine.trace import Trace
    store = Store(tmp_path / "local", signer=Signer(b"u" * 32), shared=tier(location))
    garbage = tmp_path / "not-a-value"
    garbage.write_bytes(b"\0" * 100)
    store.value_source = lambda digest: str(garbage)      # type: ignore[method-assign]
    trace = Trace("raw", "raw", "", "raw()", "v1", (), "1" * 32, 0.1)
    store.record(trace)
    with caplog.at_level(logging.WARNING, logger="nbbuild"):
        store.end_build()
        store.close(upload_seconds=30)
    assert caplog.records == []
    assert tier(location).values() == {}
    assert [key for key, _ in tier(location).rows(set())[1]] == [f"t:raw#{trace.ident}"]


@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_an_upload_that_fails_unexpectedly_is_one_warning_never_a_traceback(tmp_path, location, caplog):
    from nbbuild.engine.trace import Trace
    store = Store(tmp_path / "local", signer=Signer(b"u" * 32), shared=tier(location))

    def broken(rows):
        raise RuntimeError("a bug of ours")
    store.sharing.tier.put_rows = broken                   # type: ignore[method-assign, union-attr]
    store.record(Trace("raw", "raw", "", "raw()", "v1", (), "1" * 32, 0.1))
    with caplog.at_level(logging.WARNING, logger="nbbuild"):
        store.end_build()
        store.close(upload_seconds=30)
    assert [r.getMessage() for r in caplog.records] == [
        f"nbbuild: uploading to the shared store {location[0]} failed (RuntimeError: a bug of ours); what this "
        "session stored stays here and is uploaded by a later one",
        f"nbbuild: 1 traces were not uploaded to the shared store {location[0]} yet; they are uploaded by the "
        "next session that uses this store"]


@pytest.mark.parametrize("location", ["dir"], indirect=True)
def test_dask_workers_read_and_write_large_values_in_the_shared_tier_not_through_the_kernel(tmp_path, team,
                                                                                           monkeypatch):
    import distributed
    import numpy as np
    import nbbuild
    for name, value in team.items():
        monkeypatch.setenv(name, value)          # the cluster's workers get the kernel's environment
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "one-config"))

    def rules(b, ran):
        @b.rule
        def big():
            ran.append("big")
            return np.arange(1_000_000, dtype="int64"), os.getpid()     # 8 MB

        @b.rule
        def total():
            values, made_in = big()
            ran.append("total")
            return int(values.sum()), made_in, os.getpid()
        return big, total

    client = distributed.Client(processes=True, n_workers=1, threads_per_worker=1, dashboard_address=None)
    try:
        with nbbuild.Build(tmp_path / "one", executor=client, progress=False) as b:
            big, total = rules(b, [])
            (value, made_in, summed_in), = b.build(total)
            assert value == 499999500000 and made_in == summed_in != os.getpid()
            digest = b.store.traces(big.task().key)[0].result
            assert b.store.value_source(digest) is None          # it never came to the kernel
            assert digest in tier(team_location(team)).values()
            (array, _), = b.build(big)                         # asked for here: from the tier
            assert int(array.sum()) == value and b.store.value_source(digest) is not None
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "two-config"))
        ran: list[str] = []
        # another kernel on the team's cluster (the environment its bodies read is the workers')
        with nbbuild.Build(tmp_path / "two", executor=client, progress=False) as b:
            big, total = rules(b, ran)
            assert b.build(total)[0][0] == value and ran == []
    finally:
        client.close()


def test_a_server_stopped_mid_build_costs_one_warning_and_the_uploads_come_later(tmp_path, s3, monkeypatch):
    from nbbuild.store.sharing import Sharing
    from nbbuild.store.signing import new_key_file
    new_key_file(str(tmp_path / "team.key"))
    doomed = S3Server()
    env = {"NBBUILD_TEAM_KEY": str(tmp_path / "team.key"), "NBBUILD_SHARED": f"s3://{doomed.bucket()}/x",
           **s3_env(doomed.endpoint)}
    synced = Sharing.sync

    def then_the_server_stops(self):        # the build's first look at the tier, then the network is cut
        try:
            return synced(self)
        finally:
            doomed.stop()
    with monkeypatch.context() as m:
        m.setattr(Sharing, "sync", then_the_server_stops)
        cut = machine(tmp_path, "one", env)
    assert cut["ran"] == ["raw", "total"]
    assert len(cut["stderr"].splitlines()) == 1 and "could not be reached (uploading" in cut["stderr"], cut["stderr"]
    back = {**env, "NBBUILD_SHARED": f"s3://{s3.bucket()}/x", **s3_env(s3.endpoint)}
    again = machine(tmp_path, "one", back)
    assert again["ran"] == [], again
    two = machine(tmp_path, "two", back)
    assert two["ran"] == [], two


def test_wrong_credentials_cost_one_warning_and_the_build_goes_on(tmp_path, s3, monkeypatch):
    from nbbuild.store.signing import new_key_file
    new_key_file(str(tmp_path / "team.key"))
    env = {"NBBUILD_TEAM_KEY": str(tmp_path / "team.key"), "NBBUILD_SHARED": f"s3://{s3.bucket()}/x",
           **s3_env(s3.endpoint)}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))     # nor any from ~/.aws
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    refused = machine(tmp_path, "one", env)
    assert refused["ran"] == ["raw", "total"]
    assert len(refused["stderr"].splitlines()) == 1 and "NoCredentialsError" in refused["stderr"], refused["stderr"]

"""Several signing keys on one store: each keeps all its entries, never loads another's, and
commands that only look write nothing (issue 20)."""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbbuild
from nbbuild.store import valuefile
from nbbuild.store.signing import Signer, user_key

_BIG = 100_000          # int64s: a value file
_SIGNED = ("v:", "t:", "a:", "f:", "c:")


@contextlib.contextmanager
def _key(config):
    """Run as the user whose config folder (and so signing key) is `config`."""
    before = os.environ["XDG_CONFIG_HOME"]
    os.environ["XDG_CONFIG_HOME"] = str(config)
    try:
        yield
    finally:
        os.environ["XDG_CONFIG_HOME"] = before


def _define(b, calls, names=("small", "big", "total")):
    @b.rule
    def small(n=0):
        calls.append(f"small({n})")
        return {"n": n}

    @b.rule
    def big(n=0):
        calls.append(f"big({n})")
        return np.arange(_BIG) + n

    @b.rule
    def total(n=0):
        calls.append(f"total({n})")
        return small(n)["n"] + int(big(n).sum())

    @b.rule
    def other(n=0):
        calls.append(f"other({n})")
        return [n] * 3

    rules = {"small": small, "big": big, "total": total, "other": other}
    return [rules[n] for n in names]


def _dump(store):
    """Every row, every column, and every file of the store (its database aside)."""
    con = sqlite3.connect(f"file:{store / 'cache.db'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
                           " filename, value FROM Cache ORDER BY key").fetchall()
    finally:
        con.close()
    files = sorted((str(p.relative_to(store)), p.read_bytes()) for p in store.rglob("*")
                   if p.is_file() and not p.name.startswith("cache.db"))
    return rows, files


def _signed(rows):
    return {r[0]: r for r in rows if r[0][:2] in _SIGNED}


def _opens(store, signer, key, value, filename):
    """Whether `signer`'s key signed the row (a cosignature: by the key id in its name)."""
    if key.startswith("c:"):
        return key.endswith("#" + getattr(signer, "kid", b"").hex())
    try:
        if key.startswith("v:") and filename is not None:
            valuefile.read(str(store / filename), key[2:], signer)
        elif key.startswith("v:"):
            valuefile.open_inline(key, value, key[2:], signer)
        else:
            return type(value) is bytes and signer.open(key, value) is not None
    except valuefile.Damaged:
        return False
    return True


def _build(store, calls, *targets):
    with nbbuild.Build(store, workers=2) as b:
        rules = _define(b, calls, targets or ("total",))
        b.build(*[r.task() for r in rules])
        return b.report


def test_other_keys_look_and_build_and_the_first_key_loses_nothing(tmp_path, caplog):
    store, a, other = tmp_path / "store", tmp_path / "a", tmp_path / "b"
    calls: list = []
    with _key(a):
        _build(store, calls)
        assert sorted(calls) == ["big(0)", "small(0)", "total(0)"]
    before = _dump(store)
    caplog.set_level(logging.WARNING, "nbbuild")
    with _key(other):
        with nbbuild.Build(store, workers=1) as b:        # everything that only looks, by the Build API
            small, big, total = _define(b, calls)
            for rule in (small, big, total):
                b.status(rule), b.why(rule), b.inputs(rule)
            b.plan(total), b.statuses([small, big, total]), b.known_tasks(total)
            b.store.stats(), b.metrics()
        env = dict(os.environ, XDG_CONFIG_HOME=str(other))
        info = subprocess.run([sys.executable, "-m", "nbbuild", "store", "info", "--dir", str(store)],
                              capture_output=True, text=True, env=env)
        assert info.returncode == 0, info.stderr
    assert _dump(store) == before                          # not a row, not a file changed
    kept = [r.getMessage() for r in caplog.records if "signed by another key" in r.getMessage()]
    assert len(kept) == 1 and "gc --foreign" in kept[0]     # said once, in one line
    assert "dropped" not in info.stderr
    with _key(other):
        calls.clear()
        _build(store, calls, "other")                      # builds something else
        assert calls == ["other(0)"]
    after = _signed(_dump(store)[0])
    assert {k: after.get(k) for k in _signed(before[0])} == _signed(before[0])
    with _key(a):
        calls.clear()
        report = _build(store, calls)
        assert calls == [] and report.executed == []


def test_two_keys_building_the_same_tasks_each_keep_their_own(tmp_path):
    store, a, other = tmp_path / "store", tmp_path / "a", tmp_path / "b"
    calls: list = []
    for config in (a, other, a, other):
        with _key(config):
            calls.clear()
            _build(store, calls)
    assert calls == []            # the second key's values are cosigned, its traces beside the first's
    with _key(a):
        snapshot = _signed(_dump(store)[0])
    with _key(other), nbbuild.Build(store, workers=1) as b:
        b.clear()                 # clears its own only
    with _key(a):
        calls.clear()
        assert _build(store, calls).executed == [] and calls == []
        assert all(k in _signed(_dump(store)[0]) for k in snapshot if k[:2] != "c:" and "\x1f" not in k)


def test_eviction_under_one_key_keeps_the_values_another_key_cosigned(tmp_path):
    store, a, other = tmp_path / "store", tmp_path / "a", tmp_path / "b"
    calls: list = []
    for config in (a, other):           # the second key cosigns the first key's values
        with _key(config):
            calls.clear()
            _build(store, calls)
    with _key(a), nbbuild.Build(store, workers=1) as b:
        b.store.quota = 1               # everything of a's own must go
        b.gc()
    with _key(other):
        calls.clear()
        assert _build(store, calls).executed == [] and calls == []


def test_a_damaged_row_of_this_key_is_damage_and_another_keys_is_not(tmp_path, caplog):
    store, a, other = tmp_path / "store", tmp_path / "a", tmp_path / "b"
    calls: list = []
    with _key(a):
        _build(store, calls, "small")
    con = sqlite3.connect(store / "cache.db")
    with con:
        [(key, value)] = con.execute("SELECT key, value FROM Cache WHERE key LIKE 't:small%'").fetchall()
        damaged = bytes([value[0] ^ 1]) + value[1:]           # the MAC, not the key id
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (damaged, key))
    con.close()
    with _key(other):
        caplog.clear()
        calls.clear()
        _build(store, calls, "other")
        assert not any("damaged entries" in r.getMessage() for r in caplog.records)
    assert key in _signed(_dump(store)[0])                    # another key's damage is not its to judge
    with _key(a):
        caplog.clear()
        calls.clear()
        _build(store, calls, "small")
        assert calls == ["small(0)"]
        assert any("damaged entries" in r.getMessage() for r in caplog.records)


def test_gc_foreign_removes_the_other_keys_entries_and_says_how_many(tmp_path):
    store, a, other = tmp_path / "store", tmp_path / "a", tmp_path / "b"
    calls: list = []
    with _key(other):
        _build(store, calls, "other")
    with _key(a):
        _build(store, calls)
        mine = {k for k in _signed(_dump(store)[0]) if _opens(store, Signer(user_key()), k, *_row(store, k))}
        gc = subprocess.run([sys.executable, "-m", "nbbuild", "store", "gc", "--foreign", "--dir", str(store)],
                            capture_output=True, text=True, env=dict(os.environ))
        assert gc.returncode == 0, gc.stderr
        assert gc.stdout.startswith("removed 2 entries signed by other keys")
        assert set(_signed(_dump(store)[0])) == mine
        calls.clear()
        assert _build(store, calls).executed == []
        again = subprocess.run([sys.executable, "-m", "nbbuild", "store", "gc", "--foreign", "--dir", str(store)],
                               capture_output=True, text=True, env=dict(os.environ))
        assert again.stdout.startswith("no entries signed by other keys")
        bad = subprocess.run([sys.executable, "-m", "nbbuild", "store", "clear", "--foreign", "--dir", str(store)],
                             capture_output=True, text=True, env=dict(os.environ))
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1


def _row(store, key):
    con = sqlite3.connect(f"file:{store / 'cache.db'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT value, filename FROM Cache WHERE key = ?", (key,)).fetchone()
    finally:
        con.close()


_OPS = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["build", "gc", "look", "clear"]),
                          st.sampled_from(["small", "big", "total", "other"]), st.integers(0, 1)),
                min_size=1, max_size=7)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_interleaved_keys_never_lose_an_entry_they_did_not_delete(tmp_path_factory, ops):
    root = tmp_path_factory.mktemp("shared")
    store = root / "store"
    configs = {"a": root / "a", "b": root / "b"}
    owned: dict[str, dict] = {"a": {}, "b": {}}        # key -> the rows it had after its last step
    built: dict[str, set] = {"a": set(), "b": set()}
    calls: list = []

    def rows_of(who):
        with _key(configs[who]):
            signer = Signer(user_key())
        if not (store / "cache.db").exists():
            return {}
        return {k: r for k, r in _signed(_dump(store)[0]).items()
                if _opens(store, signer, k, r[-1], r[-2])}

    for who, op, name, n in ops:
        with _key(configs[who]), nbbuild.Build(store, workers=1, quota="unlimited") as b:
            rule = _define(b, calls, (name,))[0]
            if op == "build":
                b.build(rule.task(n))
                built[who].add((name, n))
            elif op == "gc":
                b.gc()
            elif op == "look":
                b.status(rule.task(n)), b.why(rule.task(n)), b.store.stats()
            else:
                b.clear()
                built[who].clear()
        for each in ("a", "b"):
            now = rows_of(each)
            if each != who:    # not a row of theirs went, nor changed
                assert {k: now.get(k) for k in owned[each]} == owned[each], (each, who, op)
            owned[each] = now
    for who in ("a", "b"):
        for name, n in built[who]:
            with _key(configs[who]), nbbuild.Build(store, workers=1) as b:
                calls.clear()
                b.build(_define(b, calls, (name,))[0].task(n))
                assert b.report.executed == [], (who, name, n)


# ------------------------------------------------------------ the notebook's paths that start a kernel

_NB_CELLS = [
    "%load_ext nbbuild",
    "n = 3\ndef log(name):\n    with open('calls.txt', 'a') as f:\n        f.write(name + '\\n')",
    "%%rule\nlog('raw')\nraw = list(range(n))",
    "%%rule\nlog('clean')\nclean = [x * 2 for x in raw]",
    "%%rule\nlog('other')\nother = sum(raw)",
    "print(clean)",
]
_KERNEL_TIMEOUT = 120


def _notebook(folder):
    import nbformat
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in _NB_CELLS])
    nbformat.write(nb, str(folder / "nb.ipynb"))
    return folder / ".nbbuild"


def _ran(folder):
    log = folder / "calls.txt"
    return log.read_text().split() if log.exists() else []


def _env(config):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_CURRENT_TEST", "NBBUILD_VIEW", "NBBUILD_DIR", "MPLBACKEND")}
    env["XDG_CONFIG_HOME"] = str(config)
    return env


def _cli(folder, config, *args):
    done = subprocess.run([sys.executable, "-m", "nbbuild", *args], cwd=folder, env=_env(config),
                          capture_output=True, text=True, timeout=_KERNEL_TIMEOUT)
    assert done.returncode == 0, (args, done.stderr)
    return done


def _built_under(folder, config):
    """`nbbuild run nb.ipynb` under the key of `config`: every rule ran once; the store's state."""
    store = _notebook(folder)
    _cli(folder, config, "run", "nb.ipynb")
    assert _ran(folder) == ["raw", "clean", "other"]
    return store, _state(store)


def _state(store):
    """The store's dump and its Settings table (its counts, its size, a quota kept in it)."""
    con = sqlite3.connect(f"file:{store / 'cache.db'}?mode=ro", uri=True)
    try:
        settings = con.execute("SELECT key, value FROM Settings ORDER BY key").fetchall()
    finally:
        con.close()
    return _dump(store), settings


def _runs_nothing_again(folder, config, store, before):
    """Under the first key, the next run runs no rule body: all its entries are there."""
    again = _cli(folder, config, "run", "nb.ipynb")
    assert _ran(folder) == ["raw", "clean", "other"], again.stderr
    assert "ran 0, reused" in again.stdout and "failed 0" in again.stdout, again.stdout
    assert set(_signed(before[0][0])) <= set(_signed(_dump(store)[0]))


def test_the_cli_commands_that_look_under_another_key_change_nothing(tmp_path):
    folder, a, other = tmp_path / "project", tmp_path / "a", tmp_path / "b"
    store, before = _built_under(folder, a)
    status = _cli(folder, other, "status", "nb.ipynb")
    why = _cli(folder, other, "why", "nb.ipynb", "clean")
    graph = _cli(folder, other, "graph", "nb.ipynb", "-o", str(tmp_path / "graph.svg"))
    assert _state(store) == before                     # not a row, not a file of the store changed
    assert _ran(folder) == ["raw", "clean", "other"]   # and no rule body ran
    for done in (status, why, graph):
        assert "dropped" not in done.stderr, done.stderr
    assert "never built" in status.stdout              # another key's entries are not its own
    assert (tmp_path / "graph.svg").read_text().rstrip().endswith("</svg>")
    _runs_nothing_again(folder, a, store, before)


def test_the_magics_that_look_in_a_kernel_under_another_key_change_nothing(tmp_path, kernel_in):
    folder, a, other = tmp_path / "project", tmp_path / "a", tmp_path / "b"
    store, before = _built_under(folder, a)
    said = {}
    with kernel_in(folder, env=_env(other)) as (km, kc):
        for code in _NB_CELLS[:2] + [c.replace("%%rule", "%%rule --lazy", 1) for c in _NB_CELLS[2:5]] + [
                "%nbbuild status", "%nbbuild why clean", "%nbbuild graph", "%nbbuild metrics", "%nbbuild store",
                "%build clean other --dry-run"]:
            reply = kc.execute_interactive(code, timeout=_KERNEL_TIMEOUT, store_history=False,
                                           output_hook=lambda msg, code=code: said.setdefault(code, []).append(msg))
            assert reply["content"]["status"] == "ok", (code, said.get(code))
    assert _state(store) == before                     # not a row, not a file of the store changed
    assert _ran(folder) == ["raw", "clean", "other"]   # and no rule body ran
    errors = "".join(m["content"].get("text", "") for msgs in said.values() for m in msgs
                     if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
    assert "dropped" not in errors and "UsageError" not in errors, errors
    _runs_nothing_again(folder, a, store, before)

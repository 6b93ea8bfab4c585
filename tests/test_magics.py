"""The magics, driven through a real IPython InteractiveShell."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from shells import fresh_shell

from nbbuild.notebook.lines import parse_rule_line as _parse_rule_line


@pytest.fixture
def ip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shell = fresh_shell()
    shell.run_line_magic("load_ext", "nbbuild")
    shell.run_cell("from probe import Calls; calls = Calls()")
    yield shell
    shell._nbbuild_state.build.close()
    shell.run_line_magic("unload_ext", "nbbuild")
    InteractiveShell.clear_instance()


RAW = "%%rule\ncalls.append('raw')\nraw = [3, 1, -2, 5]\n"
CLEAN = "%%rule\ncalls.append('clean')\nclean = sorted(v for v in raw if v >= threshold)\nlen(clean)\n"


def test_a_rule_cell_runs_binds_its_outputs_and_shows_its_last_expression(ip):
    ip.run_cell("threshold = 0")
    ip.run_cell(RAW)
    result = ip.run_cell(CLEAN)
    assert result.result == 3 and ip.user_ns["clean"] == [1, 3, 5]
    assert ip.user_ns["calls"] == ["raw", "clean"]


def test_running_a_rule_cell_again_restores_instead_of_running(ip):
    ip.run_cell("threshold = 0")
    ip.run_cell(RAW)
    ip.run_cell(CLEAN)
    ip.user_ns["calls"].clear()
    ip.run_cell(RAW)
    assert ip.run_cell(CLEAN).result == 3
    assert ip.user_ns["calls"] == []


def test_an_edited_upstream_cell_names_what_is_stale_and_build_updates_it(ip, capsys):
    ip.run_cell("threshold = 0")
    ip.run_cell(RAW, cell_id="raw-cell")
    ip.run_cell(CLEAN, cell_id="clean-cell")
    capsys.readouterr()
    ip.user_ns["calls"].clear()
    ip.run_cell(RAW.replace("5]", "5, 7]"), cell_id="raw-cell")
    assert "stale: clean — run %build clean" in capsys.readouterr().out
    ip.run_cell("%build clean")
    assert ip.user_ns["clean"] == [1, 3, 5, 7] and ip.user_ns["calls"] == ["raw", "clean"]
    assert capsys.readouterr().out.startswith("ran 1, reused 1, failed 0")


def test_a_plain_global_is_an_input_by_value(ip):
    ip.run_cell("threshold = 0")
    ip.run_cell(RAW)
    ip.run_cell(CLEAN)
    ip.user_ns["calls"].clear()
    ip.run_cell("threshold = 4")
    ip.run_cell("%build clean")
    assert ip.user_ns["clean"] == [5] and ip.user_ns["calls"] == ["clean"]


def test_a_name_another_rule_bound_is_bound_again_as_a_new_version(ip, capsys):
    ip.run_cell(RAW)
    result = ip.run_cell("%%rule other\nraw = raw[:2]\n")
    assert result.error_in_exec is None and "Traceback" not in capsys.readouterr().err
    ip.run_cell("%%rule\ntotal = sum(raw)\n")
    assert ip.user_ns["raw"] == [3, 1] and ip.user_ns["total"] == 4
    ip.run_cell("%build raw")                 # the latest version: other's
    assert ip.user_ns["raw"] == [3, 1]


@pytest.mark.parametrize("cell,message", [
    ("%build nothing", "no rule produces 'nothing'"),
    ("%build", "name at least one target"),
    ("%build raw -j zero", "-j takes a whole number"),
    ("%nbbuild dance", "usage: %nbbuild status | why TARGET | graph [TARGET]"),
    ("%nbbuild", "usage: %nbbuild status"),
    ("%nbbuild why", "usage: %nbbuild status"),
    ("%nbbuild why nothing", "no rule produces 'nothing'"),
    ("%nbbuild graph nothing", "no rule produces 'nothing'"),
    ("%nbbuild store --quota lots", "size 'lots' not understood"),
    ("%nbbuild store sweep", "usage: %nbbuild store [--quota SIZE] [--min-free SIZE] [--eviction gdsf|lru] [--shared URL [--shared-readonly]] [gc [--foreign] | clear]"),
        ("%nbbuild store --eviction fifo", "eviction policy 'fifo' not known"),
    ("%build model(1)", "no rule named 'model'"),
    ("%build raw(1)", "raw: too many positional arguments"),
    ("%%rule --policy sometimes\nx = 1\n", "--policy takes one of"),
    ("%%rule 9lives\nx = 1\n", "not a Python identifier"),
    ("%%rule\nx = (1 +\n", "syntax error in the cell, line"),
])
def test_bad_input_is_one_clear_line(ip, capsys, cell, message):
    ip.run_cell(RAW)
    capsys.readouterr()
    result = ip.run_cell(cell)
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_failing_rule_shows_its_own_traceback_at_the_cell_line_and_the_chain(ip, capsys):
    ip.run_cell(RAW)
    ip.run_cell("%%rule --lazy\nratio = raw[0] / 0\n")
    ip.run_cell("%%rule --lazy\nreport = ratio * 2\n")
    capsys.readouterr()
    ip.run_cell("%build report")
    captured = capsys.readouterr()
    text = re.sub(r"\x1b\[[0-9;]*m", "", captured.out + captured.err)
    assert "ZeroDivisionError" in text and "ratio = raw[0] / 0" in text
    assert "engine/scheduler.py" not in text        # the rule's frames, not the engine's
    assert "ratio failed: ZeroDivisionError: division by zero (needed by report → ratio)" in text


def test_status_and_why(ip, capsys):
    ip.run_cell("threshold = 0")
    ip.run_cell(RAW)
    ip.run_cell("%%rule --lazy\n" + CLEAN.split("\n", 1)[1])
    capsys.readouterr()
    ip.run_cell("%nbbuild status")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rule", "state", "last", "run", "size", "why"]
    assert re.fullmatch(r"raw +up to date +\d+\.\d\d s +\d+ B", lines[1])
    assert re.fullmatch(r"clean +never built +— +—", lines[2])
    ip.run_cell("%nbbuild why clean")
    assert capsys.readouterr().out == "clean is stale: never built\n"
    ip.run_cell("%build clean")
    ip.run_cell("threshold = 2")
    capsys.readouterr()
    ip.run_cell("%nbbuild status")
    assert re.search(r"clean +stale +\d+\.\d\d s +— +global threshold changed", capsys.readouterr().out)
    ip.run_cell("%nbbuild why clean")
    assert capsys.readouterr().out == "clean is stale: global threshold changed\n"


def test_status_names_failed_rules_and_why(ip, capsys):
    ip.run_cell(RAW)
    ip.run_cell("%%rule\nratio = raw[0] / 0\n")
    capsys.readouterr()
    ip.run_cell("%nbbuild status")
    assert re.search(r"ratio +failed +— +— +ZeroDivisionError: division by zero", capsys.readouterr().out)


def test_graph_draws_each_rule_above_what_it_reads(ip, capsys, tmp_path):
    (tmp_path / "data.txt").write_text("3 1 -2 5")
    ip.run_cell("threshold = 0")
    ip.run_cell("%%rule\nraw = [int(w) for w in open('data.txt').read().split()]\n")
    ip.run_cell("%%rule --lazy\n" + CLEAN.split("\n", 1)[1])
    ip.run_cell("%%rule --lazy\ntotal = sum(clean)\nbiggest = max(clean)\n")
    capsys.readouterr()
    ip.run_cell("%nbbuild graph")                 # before clean and total ever ran: from the cells
    out = re.sub(r"\(\d[^)]*\)", "(…)", capsys.readouterr().out)
    assert out == ("total — never built\n"
                   "└── clean — never built\n"
                   "    └── raw — up to date (…)\n"
                   "        └── file data.txt\n")
    ip.run_cell("%build total")
    ip.run_cell("threshold = 1")
    capsys.readouterr()
    ip.run_cell("%nbbuild graph biggest")         # a name stands for the rule producing it
    out = re.sub(r"\(\d[^)]*\)", "(…)", capsys.readouterr().out)
    assert out == ("total — stale: dependency clean is stale (global threshold changed) (…)\n"
                   "└── clean — stale: global threshold changed (…)\n"
                   "    └── raw — up to date (…)\n"
                   "        └── file data.txt\n")


def test_store_shows_size_and_quota_and_gc_and_clear_work(ip, capsys):
    ip.run_cell(RAW)
    capsys.readouterr()
    ip.run_cell("%nbbuild store --quota 5GB")
    out = capsys.readouterr().out
    assert re.fullmatch(r"store    .*\.nbbuild\n"
                        r"size     \d+\.\d KB of 5\.0 GB \(0%\)\n"
                        r"quota    saved in the store \(%nbbuild store --quota\)\n"
                        r"values   1 \(0 as files\), 1 traces\n"
                        r"reuse    \d+ hits, \d+ misses( \(\d+% hits\))?, 0 evictions \(gdsf\)\n"
                        r"traffic  .* written, .* read\n"
                        r"disk     [0-9.]+ [KMG]B free, floor [0-9.]+ [KMG]B\n", out)
    ip.run_cell("%nbbuild store --min-free 0 --eviction lru gc")
    assert "evicted 0 values" in capsys.readouterr().out
    ip.run_cell("%nbbuild store --quota 1")       # a lower quota evicts at once
    assert "values   0 (0 as files), 1 traces" in capsys.readouterr().out
    ip.run_cell("%nbbuild store --quota none")
    ip.run_cell("%nbbuild store clear")
    assert "values   0 (0 as files), 0 traces" in capsys.readouterr().out
    ip.user_ns["calls"].clear()
    ip.run_cell(RAW)
    assert ip.user_ns["calls"] == ["raw"]


def test_metrics_count_the_store_and_this_session(ip, capsys):
    ip.run_cell("threshold = 0")
    ip.run_cell(RAW)
    ip.run_cell(CLEAN)
    ip.run_cell("%build clean")
    capsys.readouterr()
    ip.run_cell("%nbbuild metrics")
    out = capsys.readouterr().out
    assert re.search(r"^store +[0-9.]+ KB of [0-9.]+ [MG]B \(\d+%\); 2 values, 2 traces$", out, re.M)
    assert re.search(r"^reuse +3 hits, 2 misses \(60% hits\), 0 evictions \(gdsf\)$", out, re.M)
    assert re.search(r"^traffic +\d+ B written, 0 B read$", out, re.M)
    assert re.search(r"^session +3 builds: ran 2, reused 3, failed 0; ", out, re.M)


@pytest.mark.parametrize("magic, words", [
    ("build", ["--force", "--dry-run", "-j N", "model(alpha=0.1)"]),
    ("nbbuild", ["status", "why TARGET", "graph [TARGET]", "store --quota SIZE", "gc", "clear", "metrics"]),
    ("rule", ["--lazy", "--policy", "NAME(param"]),
])
def test_help_explains_every_option(ip, magic, words):
    kind = "cell" if magic == "rule" else "line"
    doc = ip.find_magic(magic, kind).__doc__
    assert all(w in doc for w in words)


def test_build_and_nbbuild_declare_their_options_and_help_lists_them(ip, capsys):
    # the options are declared (IPython's magic_arguments): `%build?` shows the parser's usage
    assert ip.find_magic("build").__doc__.startswith("::\n\n  %build [--force] [--dry-run] [-j N] [--graph] [TARGET ...]")
    assert "-j N, --jobs N  run up to N rules at once in this build" in ip.find_magic("build").__doc__
    nbbuild_doc = ip.find_magic("nbbuild").__doc__
    assert all(f"--{o}" in nbbuild_doc for o in ("quota SIZE", "min-free SIZE", "eviction POLICY", "shared URL",
                                                "shared-readonly", "foreign"))


@pytest.mark.parametrize("cell, message", [
    ("%build raw --bogus", "%build: unrecognized arguments: --bogus; usage: %build TARGET [TARGET ...] [--force]"),
    ("%build raw -j", "%build: argument -j/--jobs: expected one argument; usage: %build TARGET"),
    ("%build raw -j 0", "%build: argument -j/--jobs: -j takes a whole number of at least 1, not '0'"),
    ("%nbbuild status --quota 1GB", "%nbbuild status: --quota goes with store: %nbbuild store [--quota SIZE]"),
    ("%nbbuild store --bogus", "%nbbuild: unrecognized arguments: --bogus; usage: %nbbuild store [--quota SIZE]"),
    ("%nbbuild store --min-free lots", "%nbbuild store: --min-free: size 'lots' not understood"),
    ("%nbbuild store --quota 1GB --eviction fifo",
     "%nbbuild store: --eviction: eviction policy 'fifo' not known: use one of gdsf, lru"),
])
def test_a_bad_option_is_one_line_and_changes_nothing(ip, capsys, cell, message):
    ip.run_cell(RAW)
    store = ip._nbbuild_state.build.store
    before = (store.quota, store.min_free, store.policy)
    capsys.readouterr()
    result = ip.run_cell(cell)
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert (store.quota, store.min_free, store.policy) == before


def test_options_go_anywhere_on_the_line_in_either_spelling(ip, capsys):
    ip.run_cell(RAW)
    b = ip._nbbuild_state.build
    ip.run_cell("%nbbuild store gc --min-free=1MB --eviction LRU --quota 5GB")
    assert (b.store.min_free, b.store.policy, b.store.quota) == (10**6, "lru", 5 * 10**9)
    assert "evicted 0 values" in capsys.readouterr().out
    ip.user_ns["calls"].clear()
    assert ip.run_cell("%build -j 2 raw --force").error_in_exec is None
    assert ip.run_cell("%build raw --jobs=3 --force").error_in_exec is None
    assert ip.user_ns["calls"] == ["raw", "raw"] and b.workers == 1    # -j is for that build only


def test_reload_ext_keeps_rules(ip):
    ip.run_cell(RAW)
    ip.run_line_magic("reload_ext", "nbbuild")
    ip.user_ns["calls"].clear()
    ip.run_cell("%build raw")
    assert ip.user_ns["raw"] == [3, 1, -2, 5] and ip.user_ns["calls"] == []


TESTS = os.path.dirname(__file__)
KERNEL = textwrap.dedent("""
    import json, os, sys
    from IPython.core.interactiveshell import InteractiveShell
    os.chdir(sys.argv[1])
    sys.path.insert(0, sys.argv[3])
    ip = InteractiveShell.instance()
    ip.run_cell("%load_ext nbbuild")
    ip.run_cell("from probe import Calls\\ncalls = Calls()\\nthreshold = 0")
    for cell in json.loads(sys.argv[2]):
        ip.run_cell(cell)
    print(json.dumps({n: ip.user_ns[n] for n in ["calls"] + sys.argv[4:]}))
""")


def in_two_processes(tmp_path, cells: list[str], *names: str) -> tuple[dict, dict]:
    """The cells run in a fresh process, then in another on the same store (a kernel restart):
    what each left in `calls` and in `names`."""
    return tuple(json.loads(subprocess.run([sys.executable, "-c", KERNEL, str(tmp_path), json.dumps(cells), TESTS,
                                            *names], capture_output=True, text=True, check=True).stdout.splitlines()[-1])
                 for _ in range(2))  # type: ignore[return-value]


def test_after_a_restart_the_same_cells_run_no_rule_body(tmp_path):
    first, second = in_two_processes(tmp_path, [RAW, CLEAN], "clean")
    assert first["calls"] == ["raw", "clean"]
    assert second["calls"] == [] and second["clean"] == first["clean"] == [1, 3, 5]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_rule_line_parses_or_says_usage(line):
    try:
        name, lazy, policy, params, options = _parse_rule_line(line)
    except UsageError:
        return
    assert name is None or name.isidentifier()
    assert policy in ("persist", "memory", "none") and params is None or isinstance(params, str)
    assert set(options) <= {"executor", "timeout", "retries"}


MODEL = "%%rule model(alpha, l1=0.0)\ncalls.append(('model', alpha, l1))\nscore = sum(raw) * alpha + l1\nscore\n"


def test_a_parametric_rule_is_called_anywhere_and_built_per_argument(ip):
    ip.run_cell(RAW)
    ip.run_cell(MODEL)
    ip.user_ns["calls"].clear()
    assert ip.run_cell("model(alpha=0.5)").result == 3.5
    assert ip.run_cell("model(0.5, 0.0)").result == 3.5          # the same task: not run again
    assert ip.run_cell("%build model(alpha = 2)").result == 14
    assert ip.user_ns["calls"] == [("model", 0.5, 0.0), ("model", 2, 0.0)]


def test_build_of_a_parametric_call_takes_keyword_arguments_from_a_mapping(ip):
    ip.run_cell(RAW)
    ip.run_cell(MODEL)
    ip.user_ns["calls"].clear()
    ip.run_cell("given = {'alpha': 2, 'l1': 1.0}")
    assert ip.run_cell("%build model(**given)").result == 15
    assert ip.user_ns["calls"] == [("model", 2, 1.0)]


def test_a_parametric_call_inside_a_rule_cell_is_a_tracked_dependency(ip, capsys):
    ip.run_cell(RAW)
    ip.run_cell(MODEL)
    ip.run_cell("%%rule\nbest = max(model(a) for a in (1, 2))\n")
    assert ip.user_ns["best"] == 14
    ip.user_ns["calls"].clear()
    ip.run_cell(MODEL.replace("+ l1", "+ l1 + 1"))
    ip.run_cell("%build best")
    assert ip.user_ns["best"] == 15
    assert sorted(ip.user_ns["calls"]) == [("model", 1, 0.0), ("model", 2, 0.0)]


@pytest.mark.parametrize("cell,message", [
    ("%%rule model(alpha,\nx = 1\n", "unbalanced brackets"),
    ("%%rule model(alpha beta)\nx = 1\n", "not a Python parameter list"),
    ("%%rule 1model(a)\nx = 1\n", "not a Python identifier"),
    ("%build model(", "unbalanced brackets"),
    ("%build model(alpha=undefined_name)", "the arguments of 'model(alpha=undefined_name)' failed: NameError"),
    ("%build model(1, 2, 3)", "model(alpha, l1=0.0)"),
    ("%build nosuch(1)", "no rule named 'nosuch'"),
])
def test_bad_parametric_input_is_one_clear_line(ip, capsys, cell, message):
    ip.run_cell(RAW)
    ip.run_cell(MODEL)
    capsys.readouterr()
    result = ip.run_cell(cell)
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_build_dry_run_says_what_would_run_and_runs_nothing(ip, capsys):
    ip.run_cell("threshold = 0")
    ip.run_cell(RAW)
    ip.run_cell(CLEAN)
    ip.run_cell("threshold = 2")
    ip.user_ns["calls"].clear()
    capsys.readouterr()
    ip.run_cell("%build --dry-run clean")
    assert capsys.readouterr().out == "would run: clean — global threshold changed\n"
    assert ip.user_ns["calls"] == []
    ip.run_cell("%build clean")
    capsys.readouterr()
    ip.run_cell("%build --dry-run clean")
    assert capsys.readouterr().out == "nothing would run: everything is up to date\n"


def test_build_force_runs_the_target_again(ip):
    ip.run_cell("threshold = 0")
    ip.run_cell(RAW)
    ip.run_cell(CLEAN)
    ip.user_ns["calls"].clear()
    ip.run_cell("%build --force clean")
    assert ip.user_ns["calls"] == ["clean"]


def test_a_value_that_cannot_be_stored_is_named_in_one_line(ip, capsys):
    ip.run_cell("import threading")
    ip.run_cell("%%rule\nlock = threading.Lock()\nsize = 3\n")
    err = capsys.readouterr().err
    assert "lock is not stored (lock cannot be pickled): it runs again after a restart" in err
    assert ip.user_ns["size"] == 3


def test_a_closed_file_is_not_an_output_and_does_not_stop_storing(ip, capsys, tmp_path):
    (tmp_path / "data.txt").write_text("1 2 3")
    ip.run_cell("%%rule\nwith open('data.txt') as fh:\n    numbers = [int(w) for w in fh.read().split()]\n")
    assert ip.user_ns["numbers"] == [1, 2, 3] and "fh" not in ip.user_ns
    assert "not stored" not in capsys.readouterr().err
    ip.run_cell("%nbbuild status")
    assert re.search(r"^numbers +up to date ", capsys.readouterr().out, re.M)


_TOKENS = ["raw", "clean", "model", "(", ")", "[", "]", "=", ",", " ", "'", '"', "--force", "--dry-run", "-j",
           "0", "2", "alpha", "status", "why", "graph", "store", "--quota", "gc", "clear", "metrics", "1e9",
           "--", "-", "GB", "none", "\\", "#", "{", "}", ":"]


@pytest.fixture(scope="module")
def fuzz_shell(tmp_path_factory):
    import os
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("fuzz"))
    shell = fresh_shell()
    shell.run_line_magic("load_ext", "nbbuild")
    shell.run_cell("from probe import Calls\ncalls = Calls()\nthreshold = 0")
    shell.run_cell(RAW)
    shell.run_cell("%%rule --lazy\n" + CLEAN.split("\n", 1)[1])
    shell.run_cell(MODEL)
    yield shell
    shell._nbbuild_state.build.close()
    shell.run_line_magic("unload_ext", "nbbuild")
    InteractiveShell.clear_instance()
    os.chdir(old)


@settings(max_examples=300, deadline=None)
@given(magic=st.sampled_from(["build", "nbbuild"]),
       line=st.lists(st.sampled_from(_TOKENS) | st.text(max_size=4), max_size=8).map("".join))
def test_any_build_or_nbbuild_line_works_or_says_usage(fuzz_shell, magic, line):
    try:
        fuzz_shell.run_line_magic(magic, line)
    except UsageError as e:
        assert "\n" not in str(e).strip()


def test_several_rule_cells_may_import_the_same_name(ip, capsys):
    ip.run_cell("%%rule\nimport json\nfrom math import sqrt\nencoded = json.dumps([sqrt(4)])\n")
    ip.run_cell("%%rule\nimport json\ndecoded = json.loads(encoded)\n")
    assert "already produced" not in capsys.readouterr().err
    assert ip.user_ns["decoded"] == [2.0] and ip.user_ns["sqrt"](9) == 3.0
    ip.run_cell("%%rule other\nimport json as encoded\n")    # an import is a version too
    assert ip.user_ns["encoded"] is ip.user_ns["json"]


def test_with_cell_ids_another_cell_cannot_take_a_rules_name(ip, capsys):
    ip.run_cell("%%rule x\nx = 1\n", cell_id="cell-a")
    result = ip.run_cell("%%rule x\nx = 2\n", cell_id="cell-b")
    assert isinstance(result.error_in_exec, UsageError)
    assert "rule x is defined by another cell; name this one" in capsys.readouterr().err
    assert ip.user_ns["x"] == 1
    ip.run_cell("%%rule x\nx = 3\n", cell_id="cell-a")           # the same cell, edited: replaces
    assert ip.user_ns["x"] == 3
    ip.run_cell("%%rule\nx = 4\n", cell_id="cell-b")            # unnamed: another version of x
    assert ip.user_ns["x"] == 4


def test_with_cell_ids_an_edited_cell_that_renames_its_rule_drops_the_old_one(ip, capsys):
    ip.run_cell("%%rule\nfirst = 1\nsecond = 2\n", cell_id="cell-a")
    ip.run_cell("%%rule\nsecond = 2\nfirst = 1\n", cell_id="cell-a")     # now rule "second"
    assert "already produced" not in capsys.readouterr().err
    [rule] = ip._nbbuild_state.build.rules
    assert rule.startswith("second_")
    ip.run_cell("%nbbuild status")
    out = capsys.readouterr().out
    assert "first " not in out and "second " in out


def test_without_cell_ids_the_rule_name_is_the_cells_identity(ip):
    ip.run_cell("%%rule\nx = 1\n")
    ip.run_cell("%%rule\nx = 2\n")
    assert ip.user_ns["x"] == 2


def test_an_edit_upstream_of_a_parametric_rule_names_its_stale_calls(ip, capsys):
    ip.run_cell(RAW)
    ip.run_cell(MODEL)
    ip.run_cell("model(alpha=0.5)")
    capsys.readouterr()
    result = ip.run_cell(RAW.replace("5]", "6]"))
    assert result.error_in_exec is None
    assert "stale: model(0.5) — run %build model(0.5)" in capsys.readouterr().out


def test_session_totals_count_calls_from_plain_cells(ip, capsys):
    ip.run_cell(RAW)
    ip.run_cell(MODEL)
    ip.run_cell("model(1)\nmodel(2)")
    capsys.readouterr()
    ip.run_cell("%nbbuild metrics")
    assert re.search(r"^session +3 builds: ran 3, ", capsys.readouterr().out, re.M)


def test_a_dependency_that_ran_for_a_target_is_rebound_too(ip, tmp_path):
    (tmp_path / "data.txt").write_text("3 1")
    ip.run_cell("threshold = 0")
    ip.run_cell("%%rule\nraw = [int(w) for w in open('data.txt').read().split()]\n")
    ip.run_cell(CLEAN)
    (tmp_path / "data.txt").write_text("3 1 7")
    ip.run_cell("%build clean")
    assert ip.user_ns["raw"] == [3, 1, 7] and ip.user_ns["clean"] == [1, 3, 7]


def test_an_ordinary_cell_that_changes_a_parameter_names_what_is_stale(ip, capsys):
    ip.run_cell("threshold = 0")
    ip.run_cell(RAW)
    ip.run_cell(CLEAN)
    ip.run_cell("%%rule\ntop = max(clean)\n")
    capsys.readouterr()
    ip.run_cell("threshold = 2")
    assert capsys.readouterr().out == "stale: clean, top — run %build top\n"
    ip.run_cell("unrelated = 1")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("cell, says", [
    ("await x", "run this cell without %%rule"),
    ("yield 1", "run this cell without %%rule"),
    ("return 3", "plain Python refuses it too"),
    ("from os import *", "import the names you use, or run it without %%rule"),
    ("x = (", "syntax error in the cell, line 1"),
    ("def f():\n    nonlocal q\n", "run it without %%rule"),
])
def test_a_cell_that_cannot_be_a_rule_says_what_to_do_in_one_line(ip, cell, says):
    result = ip.run_cell(f"%%rule\n{cell}\n")
    assert isinstance(result.error_in_exec, UsageError) and says in str(result.error_in_exec)
    assert "\n" not in str(result.error_in_exec)


# ---------------------------------------------------------------- where a cell's body runs

def test_rule_line_options_are_the_rules():
    assert _parse_rule_line("fit --executor dask --timeout 2.5 --retries=1") == (
        "fit", False, "persist", None, {"executor": "dask", "timeout": 2.5, "retries": 1})
    assert _parse_rule_line("model(alpha) --executor processes")[3:] == ("alpha", {"executor": "processes"})


@pytest.mark.parametrize("line, says", [
    ("--executor gpu", "--executor gpu: use threads, processes, dask"),
    ("--executor", "--executor needs a value"),
    ("--timeout soon", "--timeout takes seconds, not 'soon'"),
    ("--timeout 0", "timeout=0.0: give seconds, more than 0"),
    ("--retries 1.5", "--retries takes a whole number, not '1.5'"),
    ("--retries -1", "retries=-1: give a whole number, 0 or more"),
])
def test_a_bad_rule_option_is_one_line(ip, line, says):
    result = ip.run_cell(f"%%rule {line}\nx = 1\n")
    assert isinstance(result.error_in_exec, UsageError) and says in str(result.error_in_exec)
    assert "\n" not in str(result.error_in_exec) and "x" not in ip.user_ns


def test_a_cell_on_a_process_pool_binds_what_it_made_there_and_prints_here(ip, capsys):
    ip.run_cell("import os\nthreshold = 0\nkernel = os.getpid()")
    ip.run_cell(RAW)
    result = ip.run_cell("%%rule --executor processes\ncalls.append('clean')\n"
                         "clean = sorted(v for v in raw if v >= threshold)\nprint('in a worker:', os.getpid() != kernel)\n"
                         "len(clean)\n")
    assert result.result == 3 and ip.user_ns["clean"] == [1, 3, 5]
    assert "in a worker: True\n" in capsys.readouterr().out
    assert ip.user_ns["calls"] == ["raw"]          # the worker appended to its own copy of `calls`


def test_a_function_a_cell_defines_on_a_process_pool_reads_the_notebooks_globals_here(ip):
    ip.run_cell("threshold = 1")
    ip.run_cell("%%rule --executor processes\ndef above(x):\n    return x > threshold\n")
    ip.run_cell("threshold = 5")
    assert ip.run_cell("above(3)").result is False and ip.user_ns["above"].__globals__ is ip.user_ns


def test_a_cell_past_its_timeout_on_a_process_pool_is_stopped_and_says_so(ip):
    ip.run_cell("import time")
    result = ip.run_cell("%%rule --executor processes --timeout 1\ntime.sleep(60)\nslow = 1\n")
    error = str(result.error_in_exec)
    assert isinstance(result.error_in_exec, UsageError) and "longer than its timeout of 1 s" in error
    assert "slow" not in ip.user_ns
    ip.run_cell("%%rule slow --executor processes --timeout 5\nslow = 2\n")    # the pool still works
    assert ip.user_ns["slow"] == 2


def test_a_client_in_the_namespace_is_an_executor(ip):
    distributed = pytest.importorskip("distributed")
    client = distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    try:
        ip.user_ns["client"] = client
        ip.run_cell("import threading\nthreshold = 0")
        ip.run_cell("%%rule --executor client\nwhere = threading.current_thread().name\n")
        assert ip.user_ns["where"] != threading_name()
        assert ip._nbbuild_state.rule_for("where").executor is client
    finally:
        client.close()


def threading_name() -> str:
    import threading
    return threading.current_thread().name


def test_a_cell_that_cannot_be_sent_to_a_worker_says_which_global_in_one_line(ip, capsys):
    ip.run_cell("import threading\nlock = threading.Lock()")
    capsys.readouterr()
    result = ip.run_cell("%%rule --executor processes\nwith lock:\n    guarded = 1\n")
    error = str(result.error_in_exec)
    assert isinstance(result.error_in_exec, UsageError) and "\n" not in error
    assert "cannot be sent to its worker" in error and "from global 'lock'" in error
    shown = capsys.readouterr()
    assert "Traceback" not in shown.out + shown.err and "cloudpickle" not in shown.out + shown.err


def test_a_cell_that_fails_in_a_worker_shows_its_own_lines_there(ip, capsys):
    ip.run_cell("def ratio(a, b):\n    return a / b\n")
    ip.run_cell(RAW)
    capsys.readouterr()
    result = ip.run_cell("%%rule bad --executor processes\nfirst = raw[0]\nbad = ratio(first, raw[2] + 2)\n")
    assert str(result.error_in_exec) == "bad failed: ZeroDivisionError: division by zero"
    err = capsys.readouterr().err
    assert "in the worker" in err and "bad = ratio(first, raw[2] + 2)" in err and "return a / b" in err
    assert "nbbuild/" not in err and "cloudpickle" not in err


DEFINES = """\
def make():
    def inner(): pass
    return inner
class Model:
    def fit(self): return self
square = lambda x: x
"""
NAMED = ("named = [f'{v.__module__}.{v.__qualname__}' for v in (make, make(), Model, Model.fit, square)]\n"
         "named.append(repr(make).split(' at ')[0])")
def test_functions_and_classes_a_rule_cell_defines_are_named_as_plainly_also_after_a_restart(tmp_path):
    plain: dict = {"__name__": "__main__"}
    exec(DEFINES + NAMED, plain)
    # the second process: reused from the store, unpickled
    first, second = in_two_processes(tmp_path, ["%%rule\ncalls.append('defines')\n" + DEFINES, NAMED], "named")
    assert first["calls"] == ["defines"] and second["calls"] == []
    assert first["named"] == second["named"] == plain["named"] == [
        "__main__.make", "__main__.make.<locals>.inner", "__main__.Model", "__main__.Model.fit",
        "__main__.<lambda>", "<function make"]


@pytest.mark.parametrize("cell", ["%%rule\ny = 2\ny;", "%%rule\ny = 2\ny;  # quiet", "y = 2\ny;"])
def test_a_rule_cell_ending_in_a_semicolon_shows_no_result_as_in_plain_execution(ip, capsys, cell):
    ip.run_cell("41 + 1", store_history=True)
    ip.run_cell("x = 1\nx;", store_history=True)       # plain execution: no Out, `_` stays
    if not cell.startswith("%%rule"):
        ip.run_cell("%nbbuild auto")
    capsys.readouterr()
    ip.run_cell(cell, store_history=True)
    assert "Out" not in capsys.readouterr().out
    assert ip.user_ns["y"] == 2 and ip.user_ns["_"] == 42 and len(ip._nbbuild_state.build.rules) == 1


@pytest.mark.parametrize("imports", ["import matplotlib.dates as mdates\nimport matplotlib.pyplot as plt",
                                     "import matplotlib.pyplot as plt\nimport matplotlib.dates as dates"])
def test_a_reused_cell_imports_its_modules_in_the_order_it_imported_them(tmp_path, imports):
    """Importing a module can register things (matplotlib.dates its unit converters) whose order a
    later cell sees: a reused cell imports before its other values are loaded, in its own order."""
    cells = [f"%%rule\ncalls.append('plot')\n{imports}\nfig, ax = plt.subplots()",
             "import matplotlib.units as munits\norder = [k.__name__ for k in munits.registry]"]
    first, second = in_two_processes(tmp_path, cells, "order")
    assert first["calls"] == ["plot"] and second["calls"] == []
    assert second["order"] == first["order"]


SETS = ("%%rule\ncalls.append('settings')\nimport decimal, os, sys, warnings\nimport numpy as np\nimport pandas as pd\n"
        "np.set_printoptions(precision=2)\nnp.seterr(all='raise')\npd.set_option('display.max_rows', 7)\n"
        "decimal.getcontext().prec = 5\nwarnings.filterwarnings('ignore', message='nbbuild-test')\n"
        "sys.path.append('extra-path')\nos.makedirs('sub', exist_ok=True)\nos.chdir('sub')")
LOOKS = ("state = [repr(np.array([1.23456])), np.geterr()['divide'], pd.get_option('display.max_rows'), "
         "str(decimal.Decimal(1) / decimal.Decimal(7)), "
         "any(f[1] is not None and f[1].pattern == 'nbbuild-test' for f in warnings.filters), "
         "'extra-path' in sys.path, os.path.basename(os.getcwd())]")


def test_library_settings_a_rule_cell_changes_hold_for_later_cells_also_when_it_is_reused(tmp_path):
    """numpy's print options and error state and decimal's context live in context variables, which
    a body's copy of the context would keep to itself; pandas options, warning filters, sys.path and
    the working directory are process-wide, and a reused cell would not set them after a restart."""
    first, second = in_two_processes(tmp_path, [SETS, LOOKS], "state")
    assert first["calls"] == ["settings"] and second["calls"] == []
    assert first["state"] == second["state"] == ["array([1.23])", "raise", 7, "0.14286", True, True, "sub"]


GLOBALS = [
    "import types\nthreshold = 1",
    "%%rule\ncalls.append('defines')\n"
    "def above(x):\n    return x > threshold\n"
    "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n"
    "def twice(x):\n    return later(x)\n"
    "tests = {'above': above, 'lambdas': [lambda x: x > threshold]}\n"
    "holder = types.SimpleNamespace(func=above)\n"
    "class Limit:\n    def reached(self, x):\n        return x > threshold\n",
    "threshold = 5\ndef later(x):\n    return 2 * x",
    "seen = [above(3), fact(5), twice(2), tests['above'](3), tests['lambdas'][0](3), holder.func(3), Limit().reached(3)]",
]


def test_functions_a_rule_cell_defines_read_the_notebooks_globals_also_after_a_restart(tmp_path):
    """A function (a method, one in a container or an attribute) reads globals when called, as
    plainly: the notebook's current `threshold`, a function a later cell defines. Restored from
    the store after a restart, it reads the notebook's namespace, not a copy made when stored."""
    plain: dict = {"__name__": "__main__", "calls": []}
    for cell in GLOBALS:
        exec(cell.removeprefix("%%rule\n"), plain)
    first, second = in_two_processes(tmp_path, GLOBALS, "seen")
    assert first["calls"] == ["defines"] and second["calls"] == []
    assert first["seen"] == second["seen"] == plain["seen"] == [False, 120, 4, False, False, False, False]


NESTED = """\
class Model:
    class Config:
        pass
    def make(self):
        class Made:
            pass
        return Made
def factory():
    class Local:
        pass
    return Local
Local = factory()
Made = Model().make()
"""
def test_classes_nested_in_a_class_or_function_keep_their_qualified_names_after_a_restart(tmp_path):
    named = "named = [f'{c.__module__}.{c.__qualname__}' for c in (Model.Config, Local, Made, factory())]\n"
    plain: dict = {"__name__": "__main__"}
    exec(NESTED + named, plain)
    first, second = in_two_processes(tmp_path, ["%%rule\ncalls.append('defines')\n" + NESTED, named], "named")
    assert first["calls"] == ["defines"] and second["calls"] == []
    assert first["named"] == second["named"] == plain["named"] == [
        "__main__.Model.Config", "__main__.factory.<locals>.Local", "__main__.Model.make.<locals>.Made",
        "__main__.factory.<locals>.Local"]


WARNINGS = ("import logging\nwarned = []\nclass Warned(logging.Handler):\n"
            "    def emit(self, record):\n        warned.append(record.getMessage())\n"
            "logging.getLogger('nbbuild').addHandler(Warned())")


def test_a_restored_frame_a_later_cell_fetches_is_not_taken_for_changed_in_place(tmp_path):
    """A pandas frame loaded back pickles to other bytes than were stored (its blocks are laid
    out anew): a cell that runs after a restart and fetches it gets it as restored, unwarned."""
    pytest.importorskip("pandas")
    cells = [WARNINGS,
             "%%rule\ncalls.append('frame')\nimport pandas as pd\n"
             "df = pd.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', 'z']})\ndf['c'] = df.a * 2\n",
             "%%rule --policy none\ncalls.append('total')\ntotal = int(df.c.sum())\n"]
    first, second = in_two_processes(tmp_path, cells, "total", "warned")
    assert first["calls"] == ["frame", "total"] and second["calls"] == ["total"] and second["total"] == 12
    assert second["warned"] == first["warned"] == []


def test_a_function_reads_a_name_a_rule_cell_bound_as_the_notebook_has_it_when_called(ip):
    ip.run_cell("%%rule\nthreshold = 1")
    ip.run_cell("%%rule\ndef above(x):\n    return x > threshold\n")
    ip.run_cell("%%rule\nthreshold = 5")
    assert ip.run_cell("above(3)").result is False
    assert ip.run_cell("%%rule\nverdict = above(3)").result is None and ip.user_ns["verdict"] is False


@pytest.mark.parametrize("last", [5, 2])
def test_a_rule_cell_calling_a_function_of_another_cell_reads_the_global_the_function_reads(tmp_path, last):
    """Plainly, above() reads threshold when called; a rule cell that calls it is run again when
    threshold changes, also when the function's cell is reused from the store after a restart."""
    cells = ["%%rule\nthreshold = 1", "%%rule\ncalls.append('above')\ndef above(x):\n    return x > threshold\n",
             f"threshold = {last}", "%%rule\ncalls.append('verdict')\nverdict = above(3)"]
    first, second = in_two_processes(tmp_path, cells, "verdict")
    assert first["verdict"] is second["verdict"] is (3 > last)
    # the function's cell is defined again once threshold changed (its version holds the value it reads)
    assert first["calls"] == ["above", "above", "verdict"] and second["calls"] == []


SCALED = ["%%rule\ncalls.append('f')\nscale = 2\ndef f(x):\n    return x * scale\n"
          "class Scaler:\n    def apply(self, x):\n        return x * scale\nfirst = f(1)",
          "scale = 3", "after = [f(1), Scaler().apply(1)]", "%%rule\ncalls.append('r')\nr = f(10)"]


def test_a_function_reads_a_name_its_own_cell_bound_as_the_notebook_has_it_when_called(tmp_path):
    """Plainly `scale` is a global that `f` and `Scaler.apply` read when called: a later cell's
    `scale = 3` is what they see, also when their cell is reused after a restart."""
    first, second = in_two_processes(tmp_path, SCALED, "first", "after", "r")
    assert first["first"] == second["first"] == 2
    assert first["after"] == second["after"] == [3, 3] and first["r"] == second["r"] == 30
    assert first["calls"] == ["f", "r"] and second["calls"] == []
    edited = SCALED[:1] + ["scale = 4"] + SCALED[2:]          # and a rule cell calling f sees it
    third, fourth = in_two_processes(tmp_path, edited, "r")      # on the same store
    assert third["r"] == fourth["r"] == 40 and third["calls"] == ["r"] and fourth["calls"] == []


def test_auto_judges_a_cell_text_once_and_an_edited_cell_anew(ip):
    """`%nbbuild auto` asks whether a cell is a rule twice per run, and again each time it runs:
    its answer is kept by the cell's text, so an edit is judged anew."""
    ip.run_cell("%nbbuild auto")
    auto = ip._nbbuild_state.auto
    judged = []
    judge = auto._judge
    auto._judge = lambda cell: judged.append(cell) or judge(cell)
    for cell in ("n = 1", "n = 1", "%time n = 2"):
        assert ip.run_cell(cell).success
    assert judged == ["n = 1", "%time n = 2"]
    assert ip._nbbuild_state.versions.producer("n") is None      # the edit is an ordinary cell

"""The layout (nbbuild/engine, store, executors, report): no module imports itself through others,
the core imports no IPython, and what an older nbbuild stored under its old module paths loads."""
from __future__ import annotations

import ast
import base64
import importlib
import pathlib

import pytest

import nbbuild
from nbbuild.engine.rule import Rule
from nbbuild.engine.task import Task
from nbbuild.engine import arguments
from nbbuild.store import pickling

PACKAGE = pathlib.Path(nbbuild.__file__).parent
UI = ("IPython", "ipywidgets", "ipykernel")
# the notebook layer and the command may use IPython; the public face loads the magics on demand
NOT_CORE = ("nbbuild.notebook", "nbbuild.cli", "nbbuild.__main__")


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Every module `name` imports, at any depth (in functions too: a cycle broken by an import
    in a function is a cycle all the same), except under `if TYPE_CHECKING:` (never run)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


GRAPH = {name: {m for m in _imports(name, path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_no_module_of_nbbuild_imports_itself_through_others():
    cycles = []
    state: dict[str, int] = {}      # 1: on the path being walked, 2: done

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [name, dep])
            elif dep not in state:
                walk(dep, path + [dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            walk(name, [name])
    assert cycles == []


def test_core_modules_import_no_ipython():
    core = [n for n in MODULES if n != "nbbuild" and not n.startswith(NOT_CORE)]
    assert len(core) > 30
    using = {n: sorted(m for m in _imports(n, MODULES[n]) if m.split(".")[0] in UI) for n in core}
    assert {n: m for n, m in using.items() if m} == {}


def test_core_modules_are_small_and_say_what_they_model():
    core = [n for n in MODULES if not n.startswith(NOT_CORE)]
    long = {n: len(MODULES[n].read_text().splitlines()) for n in core}
    assert {n: lines for n, lines in long.items() if lines > 420} == {}
    assert [n for n in core if not ast.get_docstring(ast.parse(MODULES[n].read_text()))] == []


# Made by nbbuild before its modules moved into subpackages (commit 9b5f4a3), with
#   rule = Rule(json.dumps, None, name="dumps", policy="memory")
#   VALUE = pickling.dump({"rule": rule, "task": rule.task([1, 2]), "n": 3})
#   ARGS = hashing.encode_args(((rule.task("x"),), {}))
# They name `nbbuild.remote.rule_stub` and `nbbuild.rule.Task`: a value of a rule that holds a
# Rule or a Task is stored so, and a task whose argument is a Task has such a key text.
VALUE = (
    "gAWVHAIAAAAAAAB9lCiMBHJ1bGWUjA5uYmJ1aWxkLnJlbW90ZZSMCXJ1bGVfc3R1YpSTlIwEanNvbpSMBWR1bXBzlJOUaAaMBm1lbW9yeZSH"
    "lFKUjAR0YXNrlIwMbmJidWlsZC5ydWxllIwEVGFza5STlCmBlE59lChoAWgKjAVfYXJnc5RdlChLAUsCZYWUjAdfa3dhcmdzlH2UKIwIc2tp"
    "cGtleXOUiYwMZW5zdXJlX2FzY2lplIiMDmNoZWNrX2NpcmN1bGFylIiMCWFsbG93X25hbpSIjANjbHOUTowGaW5kZW50lE6MCnNlcGFyYXRv"
    "cnOUTowHZGVmYXVsdJROjAlzb3J0X2tleXOUiXWMA2tleZSMGmR1bXBzLzU1MDNmNmJjNGNjYThmNGZmZDNhlIwHZW5jb2RlZJSMw1t7IiR0"
    "IjpbWzEsMl1dfSx7IiRkIjpbWyJza2lwa2V5cyIsZmFsc2VdLFsiZW5zdXJlX2FzY2lpIix0cnVlXSxbImNoZWNrX2NpcmN1bGFyIix0cnVl"
    "XSxbImFsbG93X25hbiIsdHJ1ZV0sWyJjbHMiLG51bGxdLFsiaW5kZW50IixudWxsXSxbInNlcGFyYXRvcnMiLG51bGxdLFsiZGVmYXVsdCIs"
    "bnVsbF0sWyJzb3J0X2tleXMiLGZhbHNlXV19XZSMBV9yZXBylIwNZHVtcHMoWzEsIDJdKZR1hpRijAFulEsDdS4="
)
ARGS = (
    '[{"$t":[{"$pk":"gAWV/gEAAAAAAACMDG5iYnVpbGQucnVsZZSMBFRhc2uUk5QpgZROfZQojARydWxllIwObmJidWlsZC5yZW1vdGWUjAlydW'
    "xlX3N0dWKUk5SMBGpzb26UjAVkdW1wc5STlGgKjAZtZW1vcnmUh5RSlIwFX2FyZ3OUjAF4lIWUjAdfa3dhcmdzlH2UKIwIc2tpcGtleXOUiYwM"
    "ZW5zdXJlX2FzY2lplIiMDmNoZWNrX2NpcmN1bGFylIiMCWFsbG93X25hbpSIjANjbHOUTowGaW5kZW50lE6MCnNlcGFyYXRvcnOUTowHZGVmYX"
    "VsdJROjAlzb3J0X2tleXOUiXWMA2tleZSMGmR1bXBzL2FjMTYzNGM1MmVjYTA0ZGYyNDRjlIwHZW5jb2RlZJSMwVt7IiR0IjpbIngiXX0seyIk"
    "ZCI6W1sic2tpcGtleXMiLGZhbHNlXSxbImVuc3VyZV9hc2NpaSIsdHJ1ZV0sWyJjaGVja19jaXJjdWxhciIsdHJ1ZV0sWyJhbGxvd19uYW4iLH"
    "RydWVdLFsiY2xzIixudWxsXSxbImluZGVudCIsbnVsbF0sWyJzZXBhcmF0b3JzIixudWxsXSxbImRlZmF1bHQiLG51bGxdLFsic29ydF9rZXlz"
    'IixmYWxzZV1dfV2UjAVfcmVwcpSMCmR1bXBzKCd4JymUdYaUYi4="}]},{"$d":[]}]'
)


def test_a_value_stored_under_the_old_module_paths_loads():
    value = pickling.loads(base64.b64decode(VALUE))
    assert sorted(value) == ["n", "rule", "task"]
    assert isinstance(value["rule"], Rule) and (value["rule"].name, value["rule"].policy) == ("dumps", "memory")
    assert isinstance(value["task"], Task) and repr(value["task"]) == "dumps([1, 2])"
    assert value["task"].key == value["rule"].task([1, 2]).key
    assert value["n"] == 3


def test_task_arguments_encoded_under_the_old_module_paths_decode():
    (task,), kwargs = arguments.decode_args(ARGS)
    assert kwargs == {}
    assert isinstance(task, Task) and repr(task) == "dumps('x')" and task.key == "dumps/ac1634c52eca04df244c"


# Every class and function the modules of the previous layout defined (commit 9b5f4a3), by module:
# a pickle may name any of them.
OLD_NAMES = {
    "nbbuild.trace": "Recorder Trace _json_pairs _pairs attach match",
    "nbbuild.clean": "CleanSet",
    "nbbuild.body": "_attempt _fits _keep execute",
    "nbbuild.scheduler": "Scheduler TaskState _asker_context",
    "nbbuild.priority": "CriticalPath ReadyQueue",
    "nbbuild.files": (
        "FileHasher _changed_outside _hook _system_prefixes _tracked exclude file install_hook short_path "
        "watch_outside"
    ),
    "nbbuild.explain": (
        "TaskStatus _explain _files _notes _status _stored _variables _version_change _why _why_trace inputs "
        "known outputs plan status statuses why"
    ),
    "nbbuild.rule": (
        "Rule Task Version _Versioner _arg_repr _classify_module _distribution _is_default resolve_target "
        "rule_version"
    ),
    "nbbuild.inputs": "describe digest for_targets_only",
    "nbbuild.environment": (
        "_TrackedEnviron _all_hash _as_before _current _encoded _hash_raw _name _raw _read _read_all "
        "_recorder _text _wrote describe digest finish forget install owns pending restore"
    ),
    "nbbuild.randomness": "Draws _hash _numpy_random _state _wrap_module _wrapper describe digest install restore",
    "nbbuild.outputs": "Owners _Changed _FileView _files _put _remove _write_back copies keep look output restore",
    "nbbuild.hashing": (
        "Serialized UnserializableValue _SortedSet _analyse _canonical _canonical_pickle _const_text _dec "
        "_dump _enc _has_docstring _sort_key _subscript_writes code_fingerprint decode_args deserialize "
        "encode_args free_reads global_names hash_bytes pickle_value serialize split unpickle value_hash"
    ),
    "nbbuild.pickling": "_Pickler _Unpickler _function_setstate _main_namespace _make_function dump loads",
    "nbbuild.store": "Store _size",
    "nbbuild.table": "Table _cache prefix_range",
    "nbbuild.index": "Index",
    "nbbuild.valuefile": (
        "Damaged _FALLOCATE _alive _buffer _chunks _fallocate _hashing _layout _mapped _pad _preallocate _put "
        "file_name open_inline read row_key sweep sweep_tmp write"
    ),
    "nbbuild.signing": "Signer _create _read key_path user_key",
    "nbbuild.foreign": "alt base cosign kept owner rows",
    "nbbuild.eviction": (
        "Candidate _costs _disk_total _excess _gdsf _lru evict make_room maybe_prune order parse_size prune "
        "resolve"
    ),
    "nbbuild.memory": "Memory",
    "nbbuild.executors": "DaskExecutor HelperPool Hubs ProcessExecutor _Hub _Job _QueueChannel _exit_worker make_executor",
    "nbbuild.remote": (
        "Abandoned RemoteError Restart _Elsewhere _RemoteRecorder _Waiter _culprit _files_of _frames _one_run "
        "_recorded_groups _sendable _take_environment _tasks _worker_traceback rule_stub run run_elsewhere"
    ),
    "nbbuild.report": "BuildReport TaskReport make_report",
    "nbbuild.progress": "Progress TaskRow Tracker",
    "nbbuild.metrics": "Figures Metrics RuleTime Session",
    "nbbuild.console": "TextProgress _seconds bar line own_stderr wanted",
}


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_every_class_and_function_of_an_old_module_path_is_found_where_it_is_now(old):
    names = OLD_NAMES[old].split()
    assert [n for n in names if pickling.moved(old, n) is None] == []
    # what a pickle names as a function or class is one: the same object whatever the old path
    assert all(callable(pickling.moved(old, n)) for n in names)


@pytest.mark.parametrize("old", sorted(pickling.MOVED))
def test_every_old_module_path_is_gone_and_leads_to_modules_that_exist(old):
    assert old not in MODULES or (PACKAGE / old.split(".", 1)[1] / "__init__.py").exists()
    assert all(importlib.import_module(new) for new in pickling.MOVED[old])

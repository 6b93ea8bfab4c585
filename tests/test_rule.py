"""Rules, tasks and rule versions."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import pathlib
import subprocess
import sys
import textwrap
import urllib.parse

import pytest

import nbbuild
from nbbuild.engine.version import rule_version


def _skip(o) -> bool:
    return isinstance(o, (nbbuild.Rule, nbbuild.Build))


def _version(ns: dict, name: str, b=None):
    return rule_version(ns[name], _skip)


def _define(src: str, **globals_) -> dict:
    ns = {"__name__": "__main__", **globals_}
    exec(textwrap.dedent(src), ns)
    return ns


SRC = """
import json
def helper(x):
    return inner(x) + 1
def inner(x):
    return x * factor
class Model:
    scale = 3
    def fit(self, x):
        return x * self.scale
def rule(x):
    return helper(x) + Model().fit(x) + len(json.dumps(x))
"""


def test_version_follows_reached_user_functions_transitively():
    base = _version(_define(SRC, factor=2), "rule")
    assert base == _version(_define(SRC, factor=2), "rule")
    assert _version(_define(SRC.replace("x * factor", "x * factor + 0"), factor=2), "rule").version != base.version
    assert _version(_define(SRC.replace("scale = 3", "scale = 4"), factor=2), "rule").version != base.version
    assert _version(_define(SRC.replace("* self.scale", "+ self.scale"), factor=2), "rule").version != base.version


def test_version_reads_plain_globals_by_value():
    assert _version(_define(SRC, factor=2), "rule").version != _version(_define(SRC, factor=3), "rule").version
    parts = dict(_version(_define(SRC, factor=2), "rule").parts)
    assert "global:factor" in parts and "fn:helper" in parts and "fn:inner" in parts and "cls:Model.fit" in parts


def test_installed_and_standard_library_code_is_recorded_not_hashed():
    pytest.importorskip("numpy")
    ns = _define("import numpy as np\ndef rule(x):\n    return np.sum(x) + len(json.dumps(x))\n", json=json)
    v = _version(ns, "rule")
    assert dict(v.packages).get("numpy") == __import__("numpy").__version__
    assert not any(label.startswith("fn:") for label, _ in v.parts)


@pytest.fixture
def fresh_lookups(monkeypatch):
    """What version.py and distributions.py found out about modules and distributions forgotten."""
    from nbbuild.engine import distributions, version
    monkeypatch.setattr(version, "_user_module_cache", {})
    monkeypatch.setattr(distributions, "_installed", {})
    monkeypatch.setattr(distributions, "_sites", {})


@pytest.fixture
def no_distribution_scan(monkeypatch, fresh_lookups):
    """Lookups forgotten, and the full mapping of every distribution's files made to fail: it stats
    every file installed (0.3-1 s in a kernel)."""
    def scan():
        raise AssertionError("packages_distributions() was called")
    monkeypatch.setattr(importlib.metadata, "packages_distributions", scan)


@pytest.mark.parametrize("module, call, distribution", [("sklearn", "sklearn.get_config()", "scikit-learn"),
                                                       ("dateutil.tz", "dateutil.tz.gettz(x)", "python-dateutil")])
def test_an_installed_package_named_unlike_its_distribution_is_recorded_with_it(module, call, distribution,
                                                                                no_distribution_scan):
    pytest.importorskip(module)
    top = module.partition(".")[0]
    ns = _define(f"def rule(x):\n    return {call}\n", **{top: sys.modules[top]})
    assert dict(_version(ns, "rule").packages).get(distribution) == importlib.metadata.version(distribution)


def test_a_package_named_unlike_its_distribution_is_found_reading_the_files_of_few_distributions(
        monkeypatch, no_distribution_scan):
    """Those whose name it abbreviates (scikit-learn for sklearn) are read first: reading every
    distribution's top_level.txt or RECORD took ~12 ms at a kernel's first rule reaching one."""
    sklearn = pytest.importorskip("sklearn")
    from nbbuild.engine import distributions
    read = []
    claims = distributions._claims
    monkeypatch.setattr(distributions, "_claims", lambda info, top: read.append(info) or claims(info, top))
    _version(_define("def rule(x):\n    return sklearn.get_config()\n", sklearn=sklearn), "rule")
    assert 1 <= len(read) <= 3 < len(list(importlib.metadata.distributions()))


def test_an_editable_install_is_the_users_code_and_recorded_with_its_version(tmp_path, monkeypatch,
                                                                              no_distribution_scan):
    project, site = tmp_path / "project", tmp_path / "site"
    project.mkdir(), site.mkdir()
    (project / "myproj.py").write_text("def clean(x):\n    return x.strip()\n")
    info = site / "my_project-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-project\nVersion: 1.2\n")
    (info / "direct_url.json").write_text(json.dumps({"url": project.as_uri(), "dir_info": {"editable": True}}))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(project))
    import myproj
    v = _version(_define("def rule(x):\n    return myproj.clean(x)\n", myproj=myproj), "rule")
    assert "fn:myproj.clean" in dict(v.parts)
    assert dict(v.packages) == {"my-project": "1.2"}


def test_a_module_next_to_the_notebook_is_found_without_scanning_distributions(tmp_path, monkeypatch,
                                                                                no_distribution_scan):
    (tmp_path / "helpers.py").write_text("def clean(x):\n    return x.strip()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import helpers
    v = _version(_define("def rule(x):\n    return helpers.clean(x)\n", helpers=helpers), "rule")
    assert "fn:helpers.clean" in dict(v.parts) and v.packages == ()


def test_a_module_next_to_the_notebook_named_like_an_installed_distribution_is_the_users_code(
        tmp_path, monkeypatch, no_distribution_scan):
    name = next(d.metadata["Name"] for d in _installed_distributions()
                if d.metadata["Name"].isidentifier() and d.metadata["Name"] not in sys.modules)
    (tmp_path / f"{name}.py").write_text("def clean(x):\n    return x.strip()\n")
    spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(tmp_path))
    v = _version(_define(f"def rule(x):\n    return {name}.clean(x)\n", **{name: module}), "rule")
    assert f"fn:{name}.clean" in dict(v.parts) and v.packages == ()


def test_rules_builds_and_modules_are_edges_not_values(tmp_path):
    with nbbuild.Build(tmp_path) as b:
        ns = _define("def other():\n    return 1\ndef rule():\n    return other() + len(b.rules)\n", b=b)
        ns["other"] = b.rule(ns["other"])
        v1 = _version(ns, "rule")
        ns["other"] = b.rule(_define("def other():\n    return 2\n")["other"])
        assert _version(ns, "rule").version == v1.version
        assert not any("other" in label or label == "global:b" for label, _ in v1.parts)


def test_user_modules_are_hashed_like_notebook_code(tmp_path, monkeypatch):
    pkg = tmp_path / "mylib.py"
    pkg.write_text("def clean(x):\n    return x.strip()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mylib
    ns = _define("def rule(x):\n    return mylib.clean(x)\n", mylib=mylib)
    parts = dict(_version(ns, "rule").parts)
    assert "fn:mylib.clean" in parts


def test_versions_are_the_same_in_a_fresh_process(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        from nbbuild.engine.version import rule_version
        ns = {{"__name__": "__main__", "factor": 2}}
        exec({SRC!r}, ns)
        print(rule_version(ns["rule"], lambda o: False).version)
    """)
    out = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin"}).stdout for seed in ("1", "2")}
    assert len(out) == 1
    assert out.pop().strip() == _version(_define(SRC, factor=2), "rule").version


def test_task_keys_are_the_same_in_a_fresh_process(tmp_path):
    script = textwrap.dedent(f"""
        import nbbuild
        b = nbbuild.Build({str(tmp_path / 's')!r})
        @b.rule
        def f(a, b=2, *, c={{"x", "y"}}):
            return a
        print(f.task({{"k": (1, 2.5)}}, c={{"q", "r", "s"}}).key)
    """)
    keys = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin"}).stdout for seed in ("1", "7")}
    assert len(keys) == 1 and keys.pop().startswith("f/")


def test_task_identity_and_repr(b):
    @b.rule
    def load(path, *, sep=","):
        return path

    t = load.task("a.csv")
    assert t == load.task(path="a.csv", sep=",") and hash(t) == hash(load.task("a.csv"))
    assert repr(t) == "load('a.csv')" and repr(load.task("a.csv", sep=";")) == "load('a.csv', sep=';')"
    assert t.key == load.task("a.csv").key and t.key != load.task("b.csv").key
    assert json.loads(t.encoded) == [{"$t": ["a.csv"]}, {"$d": [["sep", ","]]}]


def test_plain_and_keyword_calls_give_one_task_and_one_repr(b):
    @b.rule
    def f(x, n=2, m=0):
        return x

    variants = [f.task(1), f.task(1, 2), f.task(1, 2, 0), f.task(x=1), f.task(1, n=2)]
    assert len({t.key for t in variants}) == 1 and {repr(t) for t in variants} == {"f(1)"}
    assert repr(f.task(1, 2, 5)) == repr(f.task(1, m=5)) == "f(1, m=5)"
    assert repr(f.task(1, 3)) == repr(f.task(x=1, n=3)) == "f(1, 3)"
    with pytest.raises(nbbuild.RuleError, match="missing a required argument"):
        f.task()
    with pytest.raises(nbbuild.RuleError, match="too many positional"):
        f.task(1, 2, 3, 4)


# A version is kept between calls while what it was made of is the same: every change below
# must still give the version a fresh computation gives.
KEPT_SRC = """
import math
def helper(x):
    return x + offset
def rule(x=2, *, k=3):
    return helper(x) * factor + math.pi + len(words)
"""


def _fresh(ns: dict, name: str):
    from nbbuild.engine import version
    version._kept.pop(ns[name], None)
    return _version(ns, name)


def _kept_and_fresh(ns: dict, name: str = "rule") -> tuple[str, str]:
    return _version(ns, name).version, _fresh(ns, name).version


@pytest.mark.parametrize("change", [
    "a global rebound", "a global of a function it calls rebound", "a global deleted", "a global defined",
    "a module attribute replaced", "defaults replaced", "keyword defaults replaced", "its code replaced",
    "a closure variable rebound", "a list mutated in place", "a class attribute set",
])
def test_a_kept_version_is_the_version_after_any_change(change, monkeypatch):
    import math
    ns = _define(KEPT_SRC, factor=2, offset=1, words=("a", "b"))
    if change == "a closure variable rebound":
        ns = _define("def make():\n    n = 1\n    def rule():\n        return n\n"
                     "    def bump():\n        nonlocal n\n        n += 1\n    return rule, bump\n")
        ns["rule"], ns["bump"] = ns["make"]()
    if change == "a list mutated in place":
        ns["words"] = ["a", "b"]
    if change == "a class attribute set":
        ns = _define("class Scale:\n    by = 2\ndef rule(x):\n    return x * Scale.by\n")
    before = _version(ns, "rule").version
    assert _version(ns, "rule") is _version(ns, "rule") or change in ("a list mutated in place",
                                                                       "a class attribute set")
    if change == "a global rebound":
        ns["factor"] = 3
    elif change == "a global of a function it calls rebound":
        ns["offset"] = 5
    elif change == "a global deleted":
        del ns["words"]
    elif change == "a global defined":
        ns["rule"].__globals__["len"] = lambda s: 0
    elif change == "a module attribute replaced":
        monkeypatch.setattr(math, "pi", 3.0)
    elif change == "defaults replaced":
        ns["rule"].__defaults__ = (4,)
    elif change == "keyword defaults replaced":
        ns["rule"].__kwdefaults__ = {"k": 4}
    elif change == "its code replaced":
        ns["rule"].__code__ = _define("def rule(x=2, *, k=3):\n    return x\n")["rule"].__code__
    elif change == "a closure variable rebound":
        ns["bump"]()
    elif change == "a list mutated in place":
        ns["words"].append("c")
    elif change == "a class attribute set":
        ns["Scale"].by = 3
    kept, fresh = _kept_and_fresh(ns)
    assert kept == fresh != before


def test_keyword_defaults_changed_in_place_are_a_new_version():
    ns = _define(KEPT_SRC, factor=2, offset=1, words=("a", "b"))
    before = _version(ns, "rule")
    assert _version(ns, "rule") is before
    ns["rule"].__kwdefaults__["k"] = 5
    kept, fresh = _kept_and_fresh(ns)
    assert kept == fresh != before.version


def test_a_rule_stub_called_where_no_body_runs_says_it_belongs_to_the_kernels_build():
    from nbbuild.engine.rule import rule_stub
    stub = rule_stub(lambda: 1, "far", "persist")     # what a worker unpickles for a rule of the kernel
    with pytest.raises(nbbuild.OutsideRuleError, match="far.*only be called inside a rule body"):
        stub()


def _installed_distributions() -> list[importlib.metadata.PathDistribution]:
    """Every distribution of a folder. Once a package has imported the importlib_metadata backport
    (its finder then on sys.meta_path), `distributions()` gives the backport's PathDistribution:
    made again here as the standard library's, each folder once."""
    folders = {str(path): None for d in importlib.metadata.distributions() if (path := getattr(d, "_path", None))}
    return [importlib.metadata.PathDistribution(pathlib.Path(f)) for f in folders]


def test_every_installed_distribution_is_recorded_with_its_metadatas_name_and_version():
    from nbbuild.engine.distributions import name_and_version
    found = {d.metadata["Name"]: (name_and_version(str(d._path)), (d.metadata["Name"], d.metadata["Version"]))
             for d in _installed_distributions()}
    assert len(found) > 20 and [name for name, (ours, theirs) in found.items() if ours != theirs] == []


def test_every_top_level_module_of_every_installed_distribution_is_found_as_importlib_finds_it(fresh_lookups):
    """The oracle: `packages_distributions()` (every distribution's files read), or `distribution(top)`
    for a module named as its distribution. The module is placed where its distribution lies,
    as a package (top/__init__.py), not imported (importing every package is slow and not safe)."""
    from nbbuild.engine.distributions import owner
    oracle = importlib.metadata.packages_distributions()
    sites = {}
    for d in _installed_distributions():
        sites.setdefault(d.metadata["Name"], []).append(str(d.locate_file("")))
    wrong = {}
    for top, names in oracle.items():
        if not top.isidentifier():
            continue        # a path in a RECORD outside the site (../../bin/x.py), not a module
        for site in {s for n in names for s in sites.get(n, ())}:
            info = owner(top, top, f"{site}/{top}/__init__.py")
            ours = info and importlib.metadata.PathDistribution(pathlib.Path(info)).metadata["Name"]
            try:
                named = importlib.metadata.distribution(top).metadata["Name"]
            except importlib.metadata.PackageNotFoundError:
                named = None
            if ours not in names and ours != named:
                wrong[(top, site)] = (ours, names)
    assert len(oracle) > 50 and wrong == {}


def test_every_editable_install_is_the_users_code_with_its_name_and_version(fresh_lookups):
    """Each editable install of the environment (nbbuild itself, in a development one), by a package
    of its project folder (found there, not imported)."""
    from nbbuild.engine.distributions import installed
    checked = 0
    for d in _installed_distributions():
        direct = json.loads(d.read_text("direct_url.json") or "{}")
        if not direct.get("dir_info", {}).get("editable") or not direct["url"].startswith("file://"):
            continue
        root = pathlib.Path(urllib.parse.unquote(urllib.parse.urlsplit(direct["url"]).path))
        packages = [p.parent for p in [*root.glob("*/__init__.py"), *root.glob("src/*/__init__.py")]]
        for package in packages:
            assert installed(package.name, package.name, str(package / "__init__.py")) == (
                True, (d.metadata["Name"], d.metadata["Version"]))
            checked += 1
    if not checked:
        pytest.skip("no editable install of a project with a package in this environment")

"""Settings (nbbuild/settings.py): every NBBUILD_* variable declared once, validated when read,
read when a Build (or the command) starts, and every later change validated the same way."""
from __future__ import annotations

import ast
import dataclasses
import math
import pathlib
import re

import pytest

import nbbuild
from nbbuild import settings
from nbbuild.errors import NbbuildError, SettingError

PACKAGE = pathlib.Path(nbbuild.__file__).parent
README = PACKAGE.parent / "README.md"


def test_each_variable_is_one_row_of_the_table_and_one_field_of_settings():
    names = [s.name for s in settings.SETTINGS]
    assert len(set(names)) == len(names) and all(n.startswith("NBBUILD_") for n in names)
    assert [s.field for s in settings.SETTINGS] == [f.name for f in dataclasses.fields(settings.Settings)]
    assert all(s.doc and "\n" not in s.doc for s in settings.SETTINGS)


def test_unset_or_blank_variables_give_the_defaults():
    assert settings.read({}) == settings.Settings()
    assert settings.read({s.name: "  " for s in settings.SETTINGS}) == settings.Settings()
    assert settings.Settings().shared_wait == 30.0 and settings.Settings().view == "widget"


def test_values_are_read_as_their_types():
    found = settings.read({"NBBUILD_DIR": "store", "NBBUILD_QUOTA": "2 GB", "NBBUILD_MIN_FREE": "unlimited",
                           "NBBUILD_EVICTION": "LRU", "NBBUILD_PROGRESS": "off", "NBBUILD_VIEW": "Text",
                           "NBBUILD_SHARED": "s3://b/p", "NBBUILD_TEAM_KEY": "/k", "NBBUILD_SHARED_READONLY": "1",
                           "NBBUILD_SHARED_WAIT": "2.5", "NBBUILD_SHARED_QUOTA": "1 KiB"})
    assert found == settings.Settings(dir="store", quota=2 * 10**9, min_free=math.inf, eviction="lru", progress=False,
                                      view="text", shared="s3://b/p", team_key="/k", shared_readonly=True,
                                      shared_wait=2.5, shared_quota=1024)


@pytest.mark.parametrize("name, value, message", [
    ("NBBUILD_QUOTA", "plenty", "NBBUILD_QUOTA: size 'plenty' not understood: give bytes or a string such as '500 MB'"),
    ("NBBUILD_MIN_FREE", "-3", "NBBUILD_MIN_FREE: size '-3' not understood"),
    ("NBBUILD_EVICTION", "fifo", "NBBUILD_EVICTION: eviction policy 'fifo' not known: use one of gdsf, lru"),
    ("NBBUILD_PROGRESS", "loud", "NBBUILD_PROGRESS='loud': use 1 (show builds on stderr) or 0 (do not)"),
    ("NBBUILD_VIEW", "html", "NBBUILD_VIEW='html': use text (the progress line on stderr) or widget (the default)"),
    ("NBBUILD_SHARED_READONLY", "maybe", "NBBUILD_SHARED_READONLY='maybe': use 1 (never upload) or 0"),
    ("NBBUILD_SHARED_WAIT", "soon", "NBBUILD_SHARED_WAIT='soon': give a number of seconds, 0 or more"),
    ("NBBUILD_SHARED_WAIT", "-1", "NBBUILD_SHARED_WAIT='-1': give a number of seconds, 0 or more"),
    ("NBBUILD_SHARED_QUOTA", "big", "NBBUILD_SHARED_QUOTA: size 'big' not understood"),
])
def test_a_bad_value_is_one_line_naming_the_variable_the_value_and_what_is_accepted(name, value, message):
    with pytest.raises(SettingError) as caught:
        settings.read({name: value})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert isinstance(caught.value, NbbuildError) and isinstance(caught.value, ValueError)


def test_a_build_reads_the_settings_when_it_is_made_and_keeps_them(store_dir, monkeypatch):
    monkeypatch.setenv("NBBUILD_EVICTION", "lru")        # after nbbuild was imported: still counts
    monkeypatch.setenv("NBBUILD_SHARED_WAIT", "3")
    with nbbuild.Build(store_dir) as b:
        monkeypatch.setenv("NBBUILD_SHARED_WAIT", "never")   # too late for this Build: it closes fine
        monkeypatch.setenv("NBBUILD_EVICTION", "gdsf")
        assert b.settings.shared_wait == 3.0 and b.settings.eviction == "lru" and b.store.policy == "lru"
    with pytest.raises(SettingError, match="^NBBUILD_SHARED_WAIT='never'"):
        nbbuild.Build(store_dir)
    with nbbuild.Build(store_dir, settings=settings.Settings(eviction="lru")) as b:   # given: not read
        assert b.store.policy == "lru"


def _reads_of_nbbuild_variables(path: pathlib.Path) -> list[str]:
    """`os.environ.get("NBBUILD_...")`, `os.environ["NBBUILD_..."]`, `os.getenv("NBBUILD_...")`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv"):
            key = node.args[0] if node.args else None
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("environ") \
                and isinstance(node.ctx, ast.Load):
            key = node.slice
        if isinstance(key, ast.Constant) and str(key.value).startswith("NBBUILD_"):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_no_other_module_reads_the_variables():
    reads = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _reads_of_nbbuild_variables(path)]
    assert reads == []
    assert "environ.get(s.name" in (PACKAGE / "settings.py").read_text()   # where they are read


def _readme_variables() -> set[str]:
    text = README.read_text()
    table = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    return set(re.findall(r"NBBUILD_[A-Z_]+", "\n".join(rows)))


def test_the_readme_configuration_table_names_every_setting_and_no_other():
    assert _readme_variables() == {s.name for s in settings.SETTINGS}


# ---------------------------------------------------------------- changes go through validation

@pytest.mark.parametrize("bound, bad, message", [
    ("quota", "lots", "^quota: size 'lots' not understood"),
    ("min_free", "a bit", "^min_free: size 'a bit' not understood"),
    ("policy", "fifo", "^eviction policy 'fifo' not known: use one of gdsf, lru"),
])
def test_a_bad_bound_set_on_the_store_is_refused_and_changes_nothing(b, bound, bad, message):
    before = getattr(b.store, bound)
    with pytest.raises(SettingError, match=message):
        setattr(b.store, bound, bad)
    assert getattr(b.store, bound) == before


def test_bounds_set_on_the_store_are_read_as_the_variables_are(b):
    b.store.quota, b.store.min_free, b.store.policy = "2 GB", "1 MB", "LRU"
    assert (b.store.quota, b.store.min_free, b.store.policy) == (2 * 10**9, 10**6, "lru")
    b.store.quota, b.store.min_free = "unlimited", "none"
    assert (b.store.quota, b.store.min_free) == (None, 0)


def test_a_bad_quota_for_set_quota_changes_nothing(b):
    before = (b.store.quota, b.store.quota_source)
    with pytest.raises(SettingError, match="^quota: size 'lots'"):
        b.set_quota("lots")
    assert (b.store.quota, b.store.quota_source) == before


def test_the_command_says_a_bad_variable_in_one_line(tmp_path, monkeypatch, capsys):
    from nbbuild.cli import main
    monkeypatch.setenv("NBBUILD_EVICTION", "fifo")
    assert main(["store", "info", "--dir", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == ("nbbuild store: NBBUILD_EVICTION: eviction policy 'fifo' not known: "
                                       "use one of gdsf, lru\n")


def test_load_ext_says_a_bad_variable_in_one_line(tmp_path, monkeypatch):
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from tests.shells import fresh_shell
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NBBUILD_VIEW", "html")
    shell = fresh_shell()
    try:
        with pytest.raises(UsageError, match=r"^nbbuild: NBBUILD_VIEW='html': use text \(the progress line on "
                                             r"stderr\) or widget \(the default\)$"):
            shell.run_line_magic("load_ext", "nbbuild")
        assert getattr(shell, "_nbbuild_state", None) is None
    finally:
        InteractiveShell.clear_instance()

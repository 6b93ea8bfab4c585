"""Traces: recording, and matching (verifying and constructive) in recorded order."""
from __future__ import annotations

from nbbuild.engine.rebuild import match
from nbbuild.engine.trace import Trace


def _tr(result, deps, version="v", created=0.0):
    return Trace("t/1", "t", "[]", "t()", version, deps, result, 1.0, (), (), created)


def test_encode_decode_round_trip():
    tr = _tr("h", ((("a/1", "x"),), (("b/1", "y"), ("@file:/p", "z"))))
    assert Trace.decode(tr.encode()) == tr
    assert tr.ident == _tr("h", tr.deps, created=5.0).ident != _tr("other", tr.deps).ident


def _fetcher(current, fetched):
    def group_matches(state, group):
        fetched.append([k for k, _ in group])
        return all(current[k] == h for k, h in group)
    return group_matches


def test_the_newest_matching_trace_verifies():
    traces = [_tr("new", ((("a", "2"),),)), _tr("old", ((("a", "1"),),))]
    fetched = []
    assert match(traces, "v", None, {}, _fetcher({"a": "2"}, fetched)) == (traces[0], 0)


def test_an_older_trace_constructs_when_inputs_are_reverted():
    traces = [_tr("new", ((("a", "2"),),)), _tr("old", ((("a", "1"),),))]
    assert match(traces, "v", None, {}, _fetcher({"a": "1"}, [])) == (traces[1], 1)


def test_other_versions_never_match():
    traces = [_tr("x", (), version="old")]
    assert match(traces, "v", None, {}, _fetcher({}, [])) == (None, -1)


def test_matching_stops_at_the_first_changed_dependency():
    """What comes after a changed dependency may no longer be needed: it is not fetched."""
    traces = [_tr("r", ((("a", "1"),), (("b", "1"),), (("c", "1"),)))]
    fetched = []
    assert match(traces, "v", None, {}, _fetcher({"a": "1", "b": "CHANGED", "c": "1"}, fetched)) == (None, -1)
    assert fetched == [["a"], ["b"]]


def test_known_hashes_answer_without_fetching():
    traces = [_tr("r", ((("a", "1"),), (("b", "1"),)))]
    fetched = []
    assert match(traces, "v", None, {"a": "1"}, _fetcher({"b": "1"}, fetched)) == (traces[0], 0)
    assert fetched == [["b"]]


def test_the_environment_variables_a_run_set_round_trip_and_are_part_of_its_identity():
    plain = _tr("h", ((("@env:A", "x"),),))
    sets = Trace(plain.key, plain.rule, plain.args, plain.repr, plain.version, plain.deps, plain.result, 1.0,
                 environ=(("A", "1"), ("B", None), ("C", "caf\udce9 \0F\"")))
    both = Trace(plain.key, plain.rule, plain.args, plain.repr, plain.version, plain.deps, plain.result, 1.0,
                 outputs=(("/p", "c", "s"),), environ=(("A", "1"),))
    for tr in (plain, sets, both):
        assert Trace.decode(tr.encode()) == tr
    assert Trace.decode(sets.encode()).outputs == ()
    assert len({plain.ident, sets.ident, both.ident}) == 3
    assert plain.encode().count(b"\0F") == 11      # a trace that set nothing is stored as before

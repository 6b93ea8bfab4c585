"""The global random generators as a body's inputs and outputs (engine/randomness.py)."""
from __future__ import annotations

import random

import numpy as np

from nbbuild.engine import randomness
from nbbuild.engine.randomness import RNG_PREFIX, Draws

RANDOM, NUMPY = RNG_PREFIX + "random", RNG_PREFIX + "numpy"


def run(body) -> tuple[dict, dict]:
    draws = Draws()
    draws.start()
    body()
    return draws.finish()


def test_a_body_that_draws_nothing_has_no_input_and_no_output():
    assert run(lambda: sum(range(10))) == ({}, {})


def test_a_body_that_draws_reads_the_state_it_started_from_and_leaves_another():
    start = randomness.digest(RANDOM)
    inputs, outputs = run(lambda: random.random())
    assert inputs == {RANDOM: start} and set(outputs) == {RANDOM}
    assert randomness.digest(RANDOM) != start


def test_a_body_that_seeds_before_it_draws_does_not_depend_on_the_state_before():
    def body():
        np.random.seed(3)
        np.random.rand(2)
    inputs, outputs = run(body)
    assert inputs == {} and set(outputs) == {NUMPY}


def test_a_body_that_seeds_where_the_state_already_is_still_leaves_that_state():
    """`random.seed(7)` when an earlier seed(7) left the state there moves nothing; the reused
    cell must seed all the same (the cells before it may leave the generator elsewhere then)."""
    random.seed(7)
    np.random.seed(7)
    inputs, outputs = run(lambda: (random.seed(7), np.random.seed(7)))
    assert inputs == {} and set(outputs) == {RANDOM, NUMPY}
    random.random()
    randomness.restore(outputs)
    assert random.random() == (random.seed(7), random.random())[1]


def test_a_body_that_draws_then_seeds_depends_on_the_state_before():
    start = randomness.digest(RANDOM)

    def body():
        random.random()
        random.seed(5)
    assert run(body)[0] == {RANDOM: start}


def test_restoring_the_end_state_gives_the_same_next_numbers():
    random.seed(11)
    np.random.seed(11)
    _, outputs = run(lambda: (random.random(), np.random.rand()))
    expected = (random.random(), np.random.rand())
    random.seed(99)
    np.random.seed(99)
    randomness.restore(outputs)
    assert (random.random(), np.random.rand()) == expected
    assert "random's global generator changed" in randomness.describe(RANDOM)


def test_seed_still_works_outside_a_body_and_keeps_its_name():
    randomness.install()
    random.seed(1)
    first = random.random()
    random.seed(1)
    assert random.random() == first and random.seed.__name__ == "seed"


def test_a_generator_made_during_the_body_is_an_output_but_no_input(monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "numpy")     # as in a fresh kernel's first cell
    draws = Draws()
    draws.start()
    monkeypatch.undo()                                        # the body imports numpy
    np.random.seed(4)
    np.random.rand()
    inputs, outputs = draws.finish()
    assert NUMPY not in inputs and NUMPY in outputs

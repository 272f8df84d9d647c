"""The placement LP's solver: scipy's HiGHS called directly gives what linprog gives, and the fallback works."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.systems.shared import lp


def test_a_hand_solved_lp():
    # min -x - 2y  s.t.  x + y <= 4,  x <= 3,  x - y = 0  ->  x = y = 2
    x = lp.solve(np.array([-1.0, -2.0]), np.array([[1.0, 1.0], [1.0, 0.0]]), np.array([4.0, 3.0]),
                 np.array([[1.0, -1.0]]), np.array([0.0]), [(0.0, None), (0.0, None)])
    assert x == pytest.approx([2.0, 2.0])


def test_infeasible_is_none():
    assert lp.solve(np.array([1.0]), np.array([[1.0]]), np.array([-1.0]), np.zeros((0, 1)), np.zeros(0),
                    [(0.0, None)]) is None


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_direct_path_equals_linprog(seed):
    rng = np.random.default_rng(seed)
    n, m = 6, 5
    a_ub, b_ub = rng.uniform(-1, 1, (m, n)), rng.uniform(0, 2, m)
    a_eq, b_eq = np.ones((1, n)), np.ones(1)
    cost = rng.uniform(-1, 1, n)
    bounds = [(0.0, 1.0)] * n
    direct, public = lp.solve(cost, a_ub, b_ub, a_eq, b_eq, bounds), lp._linprog(cost, a_ub, b_ub, a_eq, b_eq, bounds)
    assert (direct is None) == (public is None)
    if direct is not None:
        assert cost @ direct == pytest.approx(cost @ public, abs=1e-9)


def test_falls_back_to_linprog_when_the_binding_is_missing(monkeypatch):
    def broken(*args):
        raise AttributeError("no such binding")

    monkeypatch.setattr(lp, "_direct", broken)
    monkeypatch.setattr(lp, "_USE_DIRECT", True)
    x = lp.solve(np.array([-1.0]), np.array([[1.0]]), np.array([3.0]), np.zeros((0, 1)), np.zeros(0), [(0.0, None)])
    assert x == pytest.approx([3.0]) and lp._USE_DIRECT is False

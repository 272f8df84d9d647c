"""Small linear programs (FlexGen's placement LP), solved with the HiGHS dual simplex that scipy ships.

``scipy.optimize.linprog(method="highs")`` spends about 2 ms of Python per call checking and
converting its inputs, five times the solve itself for an LP of a dozen variables; a prediction
solves eight. :func:`solve` hands the same problem, with the options ``linprog`` gives HiGHS
(no presolve, dual simplex, HiGHS's default tolerances), to scipy's bundled HiGHS directly, and
falls back to ``linprog`` where that module is not as expected (another scipy). Both paths run
the same solver on the same model, so they return the same vertex; a test checks it.
"""

from __future__ import annotations

import numpy as np

_INF = 1e30  # what scipy's wrapper gives HiGHS for an infinite bound


def _direct(cost: np.ndarray, a: np.ndarray, lhs: np.ndarray, rhs: np.ndarray, lb: np.ndarray,
            ub: np.ndarray) -> np.ndarray | None:
    import scipy.optimize._highspy._core as h  # scipy's private binding: guarded by the caller

    lp = h.HighsLp()
    lp.num_col_, lp.num_row_ = a.shape[1], a.shape[0]
    m = lp.a_matrix_
    m.num_col_, m.num_row_ = a.shape[1], a.shape[0]
    m.format_ = h.MatrixFormat.kColwise
    nz = a.T != 0  # column-wise (CSC) storage
    m.start_ = np.concatenate(([0], np.cumsum(nz.sum(axis=1)))).astype(np.int32)
    m.index_ = np.nonzero(nz)[1].astype(np.int32)
    m.value_ = a.T[nz]
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, lb, ub
    lp.row_lower_, lp.row_upper_ = lhs, rhs
    highs = h._Highs()
    options = h.HighsOptions()
    options.presolve = "off"
    options.output_flag = False
    options.log_to_console = False
    options.simplex_strategy = 1  # dual simplex, as linprog asks for
    if highs.passOptions(options) == h.HighsStatus.kError or highs.passModel(lp) == h.HighsStatus.kError:
        raise RuntimeError("HiGHS refused the model")
    if highs.run() == h.HighsStatus.kError:
        raise RuntimeError("HiGHS failed")
    if highs.getModelStatus() != h.HighsModelStatus.kOptimal:
        return None
    return np.array(highs.getSolution().col_value)


def _linprog(cost, a_ub, b_ub, a_eq, b_eq, bounds) -> np.ndarray | None:
    from scipy.optimize import linprog

    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs",
                  options={"presolve": False})
    return res.x if res.status == 0 else None


_USE_DIRECT = True


def solve(cost: np.ndarray, a_ub: np.ndarray, b_ub: np.ndarray, a_eq: np.ndarray, b_eq: np.ndarray,
          bounds: list[tuple[float, float | None]]) -> np.ndarray | None:
    """argmin cost·x subject to a_ub x <= b_ub, a_eq x = b_eq and the bounds; None when infeasible."""
    global _USE_DIRECT
    if _USE_DIRECT:
        lb = np.array([lo if lo is not None else -_INF for lo, _ in bounds], dtype=float)
        ub = np.array([hi if hi is not None else _INF for _, hi in bounds], dtype=float)
        a = np.vstack((a_ub, a_eq)).astype(float)
        lhs = np.concatenate((np.full(len(b_ub), -_INF), b_eq)).astype(float)
        rhs = np.concatenate((b_ub, b_eq)).astype(float)
        try:
            return _direct(np.asarray(cost, dtype=float), a, lhs, rhs, lb, ub)
        except (ImportError, AttributeError, TypeError, RuntimeError):
            _USE_DIRECT = False  # another scipy: take the public path from now on
    return _linprog(cost, a_ub, b_ub, a_eq, b_eq, bounds)

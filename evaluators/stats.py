"""The statistics behind every verdict the workbench prints (docs/quality.md, "How a verdict is reached"): seed
means with their t-interval, paired differences, Kendall's tau with a permutation p-value, TOST equivalence and
Holm's correction over the tests of one table. `eval compare`, the seed aggregate of a quality record, the
Figure 3 orderings (studies/results.py) and the benchmarks all call these functions, so one table and another
reach their verdicts the same way.

Every function takes plain sequences of floats; numpy and scipy are imported inside the functions, so importing
this module costs nothing (`study status` and `pocketdiff --help` load no scipy).
"""
from __future__ import annotations

import math
import random
from typing import NamedTuple, Sequence

LEVEL = 0.95  # the confidence level of every interval the workbench prints; its tests run at 1 - LEVEL


class Interval(NamedTuple):
    """A mean with its two-sided interval (low, high are None for a single value)."""
    mean: float
    low: float | None
    high: float | None
    n: int


class Difference(NamedTuple):
    """The mean of the paired differences a_i - b_i, its t-interval and the two-sided paired t-test p-value
    (None for a single pair)."""
    mean: float
    low: float | None
    high: float | None
    n: int
    p: float | None


class Equivalence(NamedTuple):
    """TOST: p = the larger of the two one-sided p-values; (low, high) = the (1 - 2 alpha) interval of the mean
    difference; equivalent when p < alpha, i.e. when that whole interval lies within +-margin."""
    p: float | None
    low: float | None
    high: float | None
    margin: float
    n: int
    equivalent: bool


class Holm(NamedTuple):
    """Holm-adjusted p-values and rejections, in the order of the p-values given (None stays None / False)."""
    adjusted: list[float | None]
    rejected: list[bool]


class Verdict(NamedTuple):
    """One row of a table of paired comparisons, decided together with the other rows (`paired_verdicts`)."""
    difference: Difference
    p_holm: float | None  # the difference test's Holm-adjusted p over the table's family
    equivalence: Equivalence | None  # None when the row declares no margin
    tost_p_holm: float | None
    sign: int  # -1 / +1: a - b resolved below / above zero (Holm-adjusted p < alpha); 0: not resolved
    equivalent: bool  # TOST says |a - b| < margin (Holm-adjusted p < alpha)
    tests: int  # the family's size: every p-value Holm adjusted over


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _check(values: Sequence[float], name: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{name} is empty")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} holds a value that is not a finite number: {out}")
    return out


def _paired(a: Sequence[float], b: Sequence[float]) -> list[float]:
    a, b = _check(a, "a"), _check(b, "b")
    if len(a) != len(b):
        raise ValueError(f"paired samples must have one value per seed each: {len(a)} vs {len(b)}")
    return [x - y for x, y in zip(a, b)]


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean and its Student-t interval: mean +- t_{(1+level)/2, n-1} * sd / sqrt(n); one value: no interval."""
    from scipy.stats import t as student_t

    values = _check(values, "values")
    n = len(values)
    if n < 2:
        return Interval(values[0], None, None, 1)
    mean, sd = _mean_sd(values)
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Difference:
    """The mean of a_i - b_i (same seed i: common random numbers, so seed-to-seed noise cancels), its t-interval
    and the two-sided paired t-test p-value (H0: the mean difference is 0). Identical differences (sd 0) give a
    zero-width interval and p = 0 unless they are all 0 (p = 1): the t statistic is infinite or undefined."""
    from scipy.stats import t as student_t

    d = _paired(a, b)
    interval = t_interval(d, level)
    if interval.n < 2:
        return Difference(interval.mean, None, None, 1, None)
    mean, sd = _mean_sd(d)
    if sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * student_t.sf(abs(mean) / (sd / math.sqrt(len(d))), len(d) - 1))
    return Difference(mean, interval.low, interval.high, interval.n, p)


def tost(a: Sequence[float], b: Sequence[float], margin: float, level: float = LEVEL) -> Equivalence:
    """Two one-sided paired t-tests for equivalence within +-margin (Schuirmann, J. Pharmacokinet. Biopharm. 15,
    1987): H0- mean(a - b) <= -margin and H0+ mean(a - b) >= +margin are both rejected at alpha = 1 - level,
    p = max(p-, p+). Equivalently, the (1 - 2 alpha) t-interval of the mean difference lies inside +-margin. The
    margin must be set before the data are seen; one pair gives no test (never equivalent)."""
    from scipy.stats import t as student_t

    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"the equivalence margin must be a positive number, got {margin!r}")
    d = _paired(a, b)
    n = len(d)
    if n < 2:
        return Equivalence(None, None, None, float(margin), 1, False)
    alpha = 1 - level
    mean, sd = _mean_sd(d)
    low_high = t_interval(d, 1 - 2 * alpha)
    if sd == 0:
        p = 0.0 if abs(mean) < margin else 1.0
    else:
        se = sd / math.sqrt(n)
        p_minus = float(student_t.sf((mean + margin) / se, n - 1))  # H0-: mean <= -margin
        p_plus = float(student_t.cdf((mean - margin) / se, n - 1))  # H0+: mean >= +margin
        p = max(p_minus, p_plus)
    return Equivalence(p, low_high.low, low_high.high, float(margin), n, p < alpha)


def holm(pvalues: Sequence[float | None], alpha: float = 1 - LEVEL) -> Holm:
    """Holm's step-down correction over one family of tests (Holm, Scand. J. Statist. 6, 1979): with the m
    p-values sorted p_(1) <= ... <= p_(m), adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); a test is
    rejected when its adjusted p is below alpha. The family-wise error rate stays at alpha under any dependence
    between the tests. None entries (no test) are not part of the family."""
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    for p, _ in present:
        if not (isinstance(p, (int, float)) and 0 <= p <= 1):
            raise ValueError(f"a p-value must lie in [0, 1], got {p!r}")
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return Holm(adjusted, [a is not None and a < alpha for a in adjusted])


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a: (concordant - discordant pairs) / (n (n - 1) / 2); a tied pair counts zero (with no
    ties it equals scipy's tau-b)."""
    import numpy as np

    x, y = np.asarray(_check(a, "a")), np.asarray(_check(b, "b"))
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"Kendall's tau needs two rankings of the same n >= 2 items: {len(x)} vs {len(y)}")
    n = len(x)
    s = int((np.sign(x[:, None] - x[None, :]) * np.sign(y[:, None] - y[None, :])).sum()) // 2
    return s / (n * (n - 1) / 2)


def _dense_ranks(sorted_values: list[float]) -> tuple[int, ...]:
    ranks, r = [], 0
    for i, v in enumerate(sorted_values):
        r += i > 0 and v != sorted_values[i - 1]
        ranks.append(r)
    return tuple(ranks)


_NULL: dict[tuple, list[float]] = {}


def permutation_p(a: Sequence[float], b: Sequence[float], draws: int = 10000, seed: int = 0) -> float:
    """One-sided p-value of Kendall's tau(a, b): P(tau >= observed) when b's values are assigned to a's items
    at random, with +1 smoothing, (count + 1) / (draws + 1), so a p-value is never 0 (Phipson & Smyth, Stat.
    Appl. Genet. Mol. Biol. 9, 2010). Draw k gives the item of a-rank i the value of b-rank perm_k[i], perm_k a
    `random.Random(seed)` shuffle of the previous draw: without ties the null draw's tau is tau(range(n),
    perm_k), so the null depends only on n (and the tie pattern) and is drawn once per process."""
    import numpy as np

    x, y = _check(a, "a"), _check(b, "b")
    observed = kendall_tau(x, y)
    n = len(x)
    order_a = sorted(range(n), key=lambda i: x[i])
    sorted_a, sorted_b = [x[i] for i in order_a], sorted(y)
    key = (_dense_ranks(sorted_a), _dense_ranks(sorted_b), draws, seed)
    if key not in _NULL:
        rng = random.Random(seed)
        perm = list(range(n))
        perms = []
        for _ in range(draws):
            rng.shuffle(perm)
            perms.append(list(perm))
        xs = np.asarray(sorted_a)  # the items in a's order: a drawn b is sorted_b[perm]
        drawn = np.asarray(sorted_b)[np.asarray(perms)]  # (draws, n)
        sa = np.sign(xs[:, None] - xs[None, :])
        s = (np.sign(drawn[:, :, None] - drawn[:, None, :]) * sa).sum(axis=(1, 2)) // 2
        _NULL[key] = [int(v) / (n * (n - 1) / 2) for v in s]
    null = _NULL[key]
    return (sum(t >= observed - 1e-12 for t in null) + 1) / (len(null) + 1)


def paired_verdicts(rows: dict, level: float = LEVEL) -> dict:
    """Decide a table of paired comparisons together. `rows` maps a key to (a, b, margin): per-seed values of
    the two sides and the row's equivalence margin (None: no equivalence test for that row). Per row, the
    difference a - b is tested (paired t) and, with a margin, its equivalence (TOST); Holm's correction runs over
    every p-value of the table, so the chance of any false claim in the whole table stays at 1 - level. A row is
    resolved (sign -1 / +1) or equivalent only when its adjusted p is below alpha = 1 - level."""
    alpha = 1 - level
    diffs = {k: paired_difference(a, b, level) for k, (a, b, _) in rows.items()}
    equiv = {k: (tost(a, b, margin, level) if margin is not None else None) for k, (a, b, margin) in rows.items()}
    keys = list(rows)
    family = [diffs[k].p for k in keys] + [e.p if e is not None else None for e in (equiv[k] for k in keys)]
    adjusted = holm(family, alpha)
    m = sum(p is not None for p in family)
    out = {}
    for i, k in enumerate(keys):
        d, p_d, p_e = diffs[k], adjusted.adjusted[i], adjusted.adjusted[len(keys) + i]
        sign = (1 if d.mean > 0 else -1) if adjusted.rejected[i] else 0
        out[k] = Verdict(d, p_d, equiv[k], p_e, sign, adjusted.rejected[len(keys) + i], m)
    return out

"""The shared statistics (evaluators/stats.py) on known inputs: scipy where scipy has the same test, small cases
computed by hand, and for each function a case whose verdict must be negative (a function that always said
"resolved" or "equivalent" fails here)."""
import itertools
import math
import random

import numpy as np
import pytest
from scipy import stats as sp

from evaluators.stats import (holm, kendall_tau, paired_difference, paired_verdicts, permutation_p, t_interval,
                              tost)


# --- t_interval ---------------------------------------------------------------------------------------------

def test_t_interval_is_scipys_student_t_interval():
    values = [1.0, 1.4, 0.9, 1.3]
    mean, low, high, n = t_interval(values)
    assert (mean, n) == (pytest.approx(1.15), 4)
    assert (low, high) == pytest.approx(sp.t.interval(0.95, 3, loc=1.15, scale=sp.sem(values)))
    assert t_interval(values, 0.90).high < high  # a lower level is narrower
    assert t_interval([2.0]) == (2.0, None, None, 1)  # one value: no interval


def test_t_interval_covers_at_its_level_and_a_normal_interval_would_not():
    """With 3 seeds the t quantile (4.30) is what makes a 95% interval cover 95%; the normal quantile (1.96)
    covers far less. Fails if the interval used the wrong quantile or the wrong SD."""
    rng = np.random.default_rng(0)
    samples = rng.normal(5.0, 2.0, size=(4000, 3))
    covered = [lo <= 5.0 <= hi for _, lo, hi, _ in map(t_interval, samples)]
    assert abs(np.mean(covered) - 0.95) < 0.015
    sd = samples.std(axis=1, ddof=1)
    z_cover = np.mean(np.abs(samples.mean(axis=1) - 5.0) <= 1.96 * sd / math.sqrt(3))
    assert z_cover < 0.90


def test_t_interval_refuses_what_is_not_a_sample():
    with pytest.raises(ValueError, match="empty"):
        t_interval([])
    with pytest.raises(ValueError, match="finite"):
        t_interval([1.0, float("nan")])


# --- paired_difference --------------------------------------------------------------------------------------

def test_paired_difference_by_hand_and_by_scipy():
    # d = [2, 3, 1]: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3; df 2: sf(t) = (1 - t / sqrt(t^2 + 2)) / 2
    a, b = [3.0, 5.0, 4.0], [1.0, 2.0, 3.0]
    d = paired_difference(a, b)
    t = 2 * math.sqrt(3)
    assert d.mean == pytest.approx(2.0) and d.n == 3
    assert d.p == pytest.approx(1 - t / math.sqrt(t * t + 2)) == pytest.approx(sp.ttest_rel(a, b).pvalue)
    assert (d.low, d.high) == pytest.approx(sp.t.interval(0.95, 2, loc=2.0, scale=1 / math.sqrt(3)))
    assert d.p > 0.05 and d.low < 0 < d.high  # must fail: three seeds that disagree this much resolve nothing


def test_pairing_cancels_the_seed_offset_an_unpaired_test_cannot():
    """Common random numbers: each seed shifts both designs alike. The paired test resolves B - A = +0.5 that a
    two-sample test drowns in the seed offsets; fails if the differences were not taken per seed."""
    a = [10.0, 20.0, 30.0]
    b = [10.5, 20.4, 30.6]
    paired = paired_difference(b, a)
    assert paired.p == pytest.approx(sp.ttest_rel(b, a).pvalue) and paired.p < 0.05 and paired.low > 0
    assert sp.ttest_ind(b, a).pvalue > 0.9
    assert paired_difference([1.0], [0.0]) == (1.0, None, None, 1, None)  # one seed: no interval, no test
    assert paired_difference([1.0, 2.0], [0.0, 1.0]).p == 0.0  # identical differences: infinite t
    assert paired_difference([1.0, 2.0], [1.0, 2.0]).p == 1.0
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([1.0, 2.0], [1.0])


# --- kendall_tau and permutation_p ---------------------------------------------------------------------------

def test_kendall_tau_by_hand_and_by_scipy():
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant of 3
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0  # must fail: a reversed ranking
    rng = random.Random(1)
    for _ in range(20):
        a, b = [rng.random() for _ in range(9)], [rng.random() for _ in range(9)]
        assert kendall_tau(a, b) == pytest.approx(sp.kendalltau(a, b).statistic)  # no ties: tau-a = tau-b
    # a tie counts zero (tau-a): pairs (0,1) tied, (0,2) and (1,2) concordant -> 2/3; scipy's tau-b: 2/sqrt(6)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)


def _exact_p(a, b) -> float:
    """P(tau >= observed) over all n! assignments of b's values to a's items."""
    obs = kendall_tau(a, b)
    null = [kendall_tau(a, [b[i] for i in perm]) for perm in itertools.permutations(range(len(b)))]
    return sum(t >= obs - 1e-12 for t in null) / len(null)


@pytest.mark.parametrize("a,b", [
    ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]),          # identical: exact p = 1/120
    ([0.3, 0.1, 0.4, 0.9, 0.5], [2, 1, 4, 3, 5]),  # tau 0.6
    ([1, 1, 2, 3, 5], [1, 2, 2, 4, 3]),           # ties in both
])
def test_permutation_p_matches_the_exact_null_and_scipys_permutation_test(a, b):
    draws = 20000
    p = permutation_p(a, b, draws=draws, seed=3)
    exact = _exact_p(a, b)
    se = math.sqrt(exact * (1 - exact) / draws) + 1 / draws
    assert abs(p - exact) < 4 * se
    scipy_exact = sp.permutation_test((np.asarray(a, float), np.asarray(b, float)),
                                      lambda x, y: kendall_tau(x, y), permutation_type="pairings",
                                      vectorized=False, alternative="greater", n_resamples=10 ** 6).pvalue
    assert scipy_exact == pytest.approx(exact)


def test_permutation_p_must_fail_on_unrelated_and_reversed_rankings():
    assert permutation_p([0, 1, 2, 3, 4, 5, 6, 7], [3, 7, 0, 5, 1, 6, 2, 4]) > 0.2  # tau ~ 0
    assert permutation_p([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]) == 1.0
    assert permutation_p(list(range(12)), list(range(12))) == 1 / 10001  # +1 smoothing: never 0


def test_permutation_p_keeps_the_benchmarks_draw_order():
    """benchmarks/proxy_fidelity.md's p-values were drawn as tau(range(n), perm) over successive shuffles of
    one list by random.Random(0); the shared function reproduces them exactly (the committed table
    regenerates with identical p's)."""
    def benchmark_p(observed, n, draws=10000, seed=0):
        rng, ref, perm, null = random.Random(seed), list(range(n)), list(range(n)), []
        for _ in range(draws):
            rng.shuffle(perm)
            null.append(kendall_tau(ref, perm))
        return (sum(t >= observed - 1e-12 for t in null) + 1) / (len(null) + 1)

    rng = random.Random(7)
    for n in (4, 7, 12):
        a, b = [rng.random() for _ in range(n)], [rng.random() for _ in range(n)]
        assert permutation_p(a, b) == benchmark_p(kendall_tau(a, b), n)


# --- tost -----------------------------------------------------------------------------------------------------

def _scipy_tost(d, margin):
    return max(sp.ttest_1samp(d, -margin, alternative="greater").pvalue,
               sp.ttest_1samp(d, margin, alternative="less").pvalue)


def test_tost_is_two_one_sided_t_tests():
    b = [5.0, 7.0, 6.0, 5.5, 6.5]
    a = [x + e for x, e in zip(b, [0.10, -0.10, 0.00, 0.05, -0.05])]
    eq = tost(a, b, margin=0.5)
    d = np.subtract(a, b)
    assert eq.p == pytest.approx(_scipy_tost(d, 0.5)) and eq.equivalent and eq.n == 5
    # the interval it reads is the 90% one (alpha 0.05 on each side)
    assert (eq.low, eq.high) == pytest.approx(sp.t.interval(0.90, 4, loc=d.mean(), scale=sp.sem(d)))


def test_tost_must_fail_on_different_samples_and_on_absence_of_evidence():
    b = [5.0, 7.0, 6.0]
    clearly_apart = tost([8.1, 9.9, 9.0], b, margin=1.0)  # a - b = 3.1, 2.9, 3.0
    assert not clearly_apart.equivalent and clearly_apart.p == pytest.approx(_scipy_tost([3.1, 2.9, 3.0], 1.0))
    assert clearly_apart.p > 0.99
    assert not tost([8.0, 10.0, 9.0], b, margin=1.0).equivalent  # identical differences of 3: p = 1
    # an interval that merely contains 0 is not equivalence: noisy seeds, mean near 0
    noisy = tost([5.0, -6.0, 2.0], [0.0, 0.0, 0.0], margin=1.0)
    assert noisy.low < 0 < noisy.high and not noisy.equivalent and noisy.p > 0.05
    assert noisy.p == pytest.approx(_scipy_tost([5.0, -6.0, 2.0], 1.0))
    assert not tost([1.0], [1.0], margin=1.0).equivalent  # one seed: no test
    with pytest.raises(ValueError, match="positive"):
        tost([1.0, 2.0], [1.0, 2.0], margin=0.0)


def test_tost_reads_the_90_not_the_95_interval():
    """A difference whose 90% interval lies inside the margin but whose 95% interval does not is equivalent at
    alpha 0.05: the test is two one-sided 5% tests, not one 95% interval."""
    d = [0.2, 0.5, 0.35, 0.3, 0.45]
    zeros = [0.0] * 5
    mean, se = np.mean(d), sp.sem(d)
    margin = (sp.t.ppf(0.95, 4) * se + sp.t.ppf(0.975, 4) * se) / 2 + mean  # between the two upper bounds
    eq = tost(d, zeros, margin)
    assert eq.equivalent and 0.025 < eq.p < 0.05
    assert not tost(d, zeros, mean + 0.9 * sp.t.ppf(0.95, 4) * se).equivalent


# --- holm -------------------------------------------------------------------------------------------------------

def test_holm_by_hand_rejects_fewer_than_unadjusted():
    # sorted 0.005, 0.01, 0.03, 0.04: x4 = 0.02, x3 = 0.03, x2 = 0.06, x1 = 0.04 -> running max 0.06
    p = [0.01, 0.04, 0.03, 0.005]
    out = holm(p, alpha=0.05)
    assert out.adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert out.rejected == [True, False, False, True]
    assert sum(out.rejected) < sum(x < 0.05 for x in p) == 4  # must fail: the correction rejects fewer
    assert holm([0.01, None, 0.5]) == ([0.02, None, 0.5], [True, False, False])  # None is not in the family
    assert holm([]) == ([], [])
    with pytest.raises(ValueError):
        holm([1.5])


def test_holm_holds_the_family_wise_error_and_unadjusted_does_not():
    rng = np.random.default_rng(0)
    families = rng.uniform(size=(4000, 10))  # 10 true null hypotheses per family
    holm_any = np.mean([any(holm(list(f)).rejected) for f in families])
    raw_any = np.mean((families < 0.05).any(axis=1))
    assert holm_any <= 0.06 and raw_any > 0.35


# --- paired_verdicts: one table decided together -----------------------------------------------------------------

def test_paired_verdicts_correct_over_the_whole_table():
    rows = {
        "apart": ([1.0, 2.0, 3.0], [1.5, 2.45, 3.55], None),  # a - b = -0.5 +- 0.05: resolved, a lower
        "same": ([1.0, 2.0, 3.0], [1.01, 1.99, 3.0], 0.5),     # within +-0.5: equivalent
        "noisy": ([1.0, 2.0, 3.0], [2.0, 1.0, 3.5], 0.5),      # neither
    }
    v = paired_verdicts(rows)
    assert v["apart"].tests == 5  # 3 difference tests + 2 equivalence tests
    family = [paired_difference(a, b).p for a, b, _ in rows.values()] + \
             [tost(a, b, m).p for a, b, m in rows.values() if m is not None]
    adjusted = holm(family).adjusted
    assert [v[k].p_holm for k in rows] == pytest.approx(adjusted[:3])
    assert v["apart"].sign == -1 and not v["apart"].equivalent and v["apart"].equivalence is None
    assert v["same"].sign == 0 and v["same"].equivalent and v["same"].tost_p_holm == pytest.approx(adjusted[3])
    assert v["noisy"].sign == 0 and not v["noisy"].equivalent  # must fail: not resolved
    # alone, "apart" is resolved (p = 0.0033); in a family of 20 such tests it is not (20 x 0.0033 > 0.05)
    alone = paired_difference(*rows["apart"][:2]).p
    assert alone == pytest.approx(0.0033, abs=1e-4) and holm([alone] * 20).rejected == [False] * 20

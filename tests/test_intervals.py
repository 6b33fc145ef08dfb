"""The jackknife intervals over blocks of windows: exact on constructed sums, and controls on simulated samples."""

import math

import numpy as np
import pytest
import torch

from possae.intervals import N_BLOCKS, Interval, block_of, filled_blocks, check_sentence, check_table, jackknife
from possae.metrics import PositionSums


def blocked(values: torch.Tensor, n_blocks: int = N_BLOCKS) -> PositionSums:
    """Return PositionSums over windows (rows of values, one position each) dealt in turn into blocks."""
    sums = PositionSums.empty(values.shape[1], n_blocks)
    for i, row in enumerate(values):
        sums.add_windows(i % n_blocks, v=row[None, :])
    return sums


def test_parts_add_up_and_leave_out_is_exact():
    values = torch.arange(40.0).reshape(10, 4) ** 1.5
    sums = blocked(values, 4)
    assert torch.equal(sum(p.n for p in sums.parts), sums.n)
    for b in range(4):
        kept = values[[i for i in range(10) if i % 4 != b]]
        out = sums.leave_out(b)
        np.testing.assert_allclose(out.totals["v"], kept.sum(0).double())
        np.testing.assert_allclose(out.n, torch.full((4,), float(len(kept))))
    assert sums.leave_out(None).totals["v"] is sums.totals["v"]
    with pytest.raises(ValueError, match="part 4 does not exist"):
        sums.add_windows(4, v=values[:1])


def test_jackknife_of_a_mean_is_the_standard_error_of_block_means():
    """With equal blocks, the jackknife's standard error of a mean is the standard error of the block means."""
    rng = np.random.default_rng(0)
    values = torch.tensor(rng.normal(size=(8 * 6, 1)))
    sums = blocked(values, 8)
    iv = jackknife(lambda b: {"mean": float(sums.leave_out(b).mean("v")[0])}, 8)["mean"]
    block_means = np.array([float(p.mean("v")[0]) for p in sums.parts])
    se = block_means.std(ddof=1) / math.sqrt(8)
    from scipy import stats
    assert iv.value == pytest.approx(float(values.mean()))
    assert iv.half_width == pytest.approx(stats.t.ppf(0.975, 7) * se)


def coverage(se_factor: float, n: int = 300) -> float:
    """Return how often the 95 % interval of a ratio of means covers its true value (2.0) over n simulated samples
    of 48 windows; se_factor scales the jackknife's variance factor (1: the method; other: a wrong one)."""
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(n):
        a = rng.normal(2.0, 1.0, size=48) * (b := rng.gamma(4.0, 0.25, size=48))  # E[a] = 2 E[b], E[b] = 1
        s = PositionSums.empty(1, 8)
        for i in range(48):
            s.add(torch.zeros(1, dtype=torch.long), i % 8, a=torch.tensor([a[i]]), b=torch.tensor([b[i]]))
        def ratio(blk):
            t = s.leave_out(blk).totals
            return {"r": float(t["a"][0] / t["b"][0])}
        iv = jackknife(ratio, 8)["r"]
        half = iv.half_width * se_factor
        hits += iv.value - half <= 2.0 <= iv.value + half
    return hits / n


def test_interval_covers_a_ratio_about_95_percent_of_the_time():
    """Positive control: the intervals of a ratio of means cover the true ratio at about their level."""
    assert 0.90 <= coverage(1.0) <= 0.99


def test_a_too_narrow_method_fails_the_coverage_control():
    """Negative control: leaving out the (K-1)/K inflation of the leave-one-out spread (a variance K-1 = 7 times too
    small) covers far less often, so the coverage check can fail."""
    assert coverage(1 / math.sqrt(7)) < 0.75


def test_a_figure_without_sampling_variance_has_a_zero_width_interval():
    sums = blocked(torch.ones(16, 3), 8)
    iv = jackknife(lambda b: {"mean": float(sums.leave_out(b).mean("v").mean())}, 8)["mean"]
    assert (iv.low, iv.value, iv.high) == (1.0, 1.0, 1.0)


def test_check_table_and_sentence():
    table = check_table([("far", Interval(3.0, 2.5, 3.5), 1.0), ("across", Interval(1.1, 0.8, 1.4), 1.0)])
    assert table["holds"].tolist() == [True, False]
    assert "except 1: across" in check_sentence(table, "a sample")
    assert "would not change" in check_sentence(table.iloc[:1], "a sample")
    assert "No verdict" in check_sentence(check_table([]), "a sample")


def test_one_block_gives_no_interval_and_blocks_deal_in_turn():
    iv = jackknife(lambda b: {"x": 1.0}, 1)["x"]
    assert iv.value == 1.0 and math.isnan(iv.low) and not iv.excludes(0.0)
    assert [block_of(i) for i in range(N_BLOCKS + 2)] == [*range(N_BLOCKS), 0, 1]
    assert filled_blocks(blocked(torch.ones(3, 2))) == 3 and filled_blocks(blocked(torch.ones(20, 2))) == N_BLOCKS


def test_count_rule_settles_only_when_the_sure_figures_decide_it():
    """A 'more than half below 0.5' rule over 4 figures needs 3: settled by 3 surely below, or by 2 surely above
    (then at most 2 can be below); open otherwise."""
    def table(*intervals):
        return check_table([(f"s{i}: kept", Interval((lo + hi) / 2, lo, hi), 0.5) for i, (lo, hi) in enumerate(intervals)])

    from possae.intervals import count_rule_sentence
    below, above, across = (0.1, 0.3), (0.6, 0.9), (0.3, 0.7)
    assert "holds whatever" in count_rule_sentence(table(below, below, below, across), "kept", "x", "below", 0.5)
    assert "holds whatever" in count_rule_sentence(table(above, above, below, across), "kept", "x", "below", 0.5)
    assert "could change" in count_rule_sentence(table(below, below, across, above), "kept", "x", "below", 0.5)
    assert "asks for 3" in count_rule_sentence(table(below, below, across, above), "kept", "x", "below", 0.5)
    assert count_rule_sentence(table(below), "other", "x", "below", 0.5) == ""


def test_check_carries_each_figures_threshold_and_the_blocks_it_used():
    sums = blocked(torch.arange(12.0).reshape(6, 2), 3)  # 6 windows in 3 blocks

    def figures(block):
        m = sums.leave_out(block).mean("v")
        return {"first": (float(m[0]), 100.0), "second": (float(m[1]), -1.0)}

    from possae.intervals import check
    table = check(figures, 3)
    assert table["threshold"].tolist() == [100.0, -1.0] and table["holds"].tolist() == [True, True]
    assert table["value"].tolist() == [5.0, 6.0] and (table["blocks"] == 3).all()
    assert "over 3 blocks of windows" in check_sentence(table, "a sample")

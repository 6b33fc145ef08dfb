"""How sure a chapter's figures are: leave-one-block-out jackknife intervals over blocks of held-out windows.

The windows of a sample are dealt in turn into N_BLOCKS blocks (batch i into block i mod N_BLOCKS, so that every
block holds every corpus). A figure computed from all windows gets the delete-one-block jackknife's standard error,
from the same figure computed N_BLOCKS times with one block left out, and a Student-t interval with N_BLOCKS - 1
degrees of freedom. The figure may be any smooth function of the sums (a ratio, a correlation of curves).

A chapter that runs on a smaller sample than another shows with these intervals that its verdicts do not depend on
the sample: each verdict's figure stays on one side of its threshold over its whole interval (:func:`check_table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

N_BLOCKS = 8  # blocks of windows a sample is dealt into; 7 degrees of freedom
LEVEL = 0.95  # the intervals' coverage


@dataclass(frozen=True)
class Interval:
    """A figure from the whole sample and its jackknife interval."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Return half the interval's width."""
        return (self.high - self.low) / 2

    def excludes(self, threshold: float) -> bool:
        """Return whether the whole interval lies on one side of the threshold (strictly)."""
        return self.low > threshold or self.high < threshold


def block_of(batch: int) -> int:
    """Return the block a sample's batch number `batch` is dealt into."""
    return batch % N_BLOCKS


def filled_blocks(sums) -> int:
    """Return how many of a PositionSums' parts hold inputs (the first ones: batches are dealt in turn)."""
    return sum(bool(part.n.any()) for part in sums.parts)


def jackknife(figures: Callable[[int | None], Mapping[str, float]], n_blocks: int = N_BLOCKS,
              level: float = LEVEL) -> dict[str, Interval]:
    """Return per figure its value and jackknife interval; figures(None) computes them from every block,
    figures(i) with block i left out. Under 2 blocks (a sample of one batch) the intervals are NaN."""
    full = dict(figures(None))
    if n_blocks < 2:
        return {name: Interval(float(value), math.nan, math.nan) for name, value in full.items()}
    left_out = [dict(figures(i)) for i in range(n_blocks)]
    t = float(stats.t.ppf(0.5 + level / 2, n_blocks - 1))
    out = {}
    for name, value in full.items():
        theta = np.array([lo[name] for lo in left_out], dtype=float)
        if not np.isfinite(value) or not np.isfinite(theta).all():
            out[name] = Interval(float(value), math.nan, math.nan)
            continue
        se = math.sqrt((n_blocks - 1) / n_blocks * float(((theta - theta.mean()) ** 2).sum()))
        out[name] = Interval(float(value), float(value) - t * se, float(value) + t * se)
    return out


def check_table(rows: list[tuple[str, Interval, float]], n_blocks: int = N_BLOCKS) -> pd.DataFrame:
    """Return one row per (figure, interval, threshold): the figure, its interval, the threshold its verdict compares
    it with, whether the whole interval stays on the figure's side of it, and the blocks the interval came from."""
    return pd.DataFrame([{"figure": name, "value": iv.value, "low": iv.low, "high": iv.high, "threshold": threshold,
                          "holds": iv.excludes(threshold), "blocks": n_blocks} for name, iv, threshold in rows],
                        columns=["figure", "value", "low", "high", "threshold", "holds", "blocks"])


def check(figures: Callable[[int | None], Mapping[str, tuple[float, float]]], n_blocks: int = N_BLOCKS) -> pd.DataFrame:
    """Return check_table of figures that come with their thresholds: figures(block) gives {name: (value,
    threshold)} with that block left out (none when block is None)."""
    thresholds: dict[str, float] = {}

    def values(block: int | None) -> dict[str, float]:
        out = figures(block)
        if block is None:
            thresholds.update({name: t for name, (_, t) in out.items()})
        return {name: v for name, (v, _) in out.items()}

    intervals = jackknife(values, n_blocks)
    return check_table([(name, iv, thresholds[name]) for name, iv in intervals.items()], n_blocks)


def check_sentence(table: pd.DataFrame, sample: str) -> str:
    """Return the sentence that says whether every verdict's figure keeps its side of its threshold over its
    interval, naming the ones that do not."""
    if table.empty:
        return "No verdict of this page compares a figure with a threshold, so no interval is checked."
    loose = table[~table["holds"]]
    head = (f"On {sample}, the {LEVEL:.0%} jackknife interval over {int(table['blocks'].iloc[0])} blocks of windows of "
            f"each of the {len(table)} figures that verdicts read")
    if loose.empty:
        return f"{head} stays on one side of its threshold: a larger sample would not change these verdicts."
    names = ", ".join(loose["figure"])
    return (f"{head} stays on one side of its threshold except {len(loose)}: {names}. With a larger sample these "
            "could fall on either side.")


def check_display(table: pd.DataFrame) -> pd.DataFrame:
    """Return check_table for display: the figure, its value with its interval, the threshold, and whether the
    verdict holds over the whole interval."""
    return pd.DataFrame({"figure": table["figure"], "value": [f"{v:.3g}" for v in table["value"]],
                         f"{LEVEL:.0%} interval": [f"{lo:.3g} to {hi:.3g}" if math.isfinite(lo) and math.isfinite(hi)
                                                   else "— (too few windows)" for lo, hi in zip(table["low"], table["high"])],
                         "threshold": [f"{t:g}" for t in table["threshold"]],
                         "same side over the interval": ["yes" if h else "no" for h in table["holds"]]})


def count_rule_sentence(table: pd.DataFrame, suffix: str, what: str, side: str, most: float) -> str:
    """Return whether a verdict that counts figures (those whose name ends in `suffix`) on one side of their threshold
    ('above' or 'below'), and asks more than `most` of them, holds over every figure's interval: it does when the
    figures on that side over their whole interval are already enough, or when those on the other side over their whole
    interval already make it fail."""
    rows = table[table["figure"].str.endswith(suffix)]
    if rows.empty:
        return ""
    sure_in = int(((rows["low"] > rows["threshold"]) if side == "above" else (rows["high"] < rows["threshold"])).sum())
    sure_out = int(((rows["high"] < rows["threshold"]) if side == "above" else (rows["low"] > rows["threshold"])).sum())
    n, need = len(rows), math.floor(most * len(rows)) + 1
    settled = sure_in >= need or n - sure_out < need
    return (f"Of the {n} {what}, {sure_in} lie {side} {rows['threshold'].iloc[0]:g} over their whole interval and "
            f"{sure_out} on the other side; the rule asks for {need}, so its verdict "
            f"{'holds whatever the others are' if settled else 'could change with a larger sample'}.")

"""How prose writes numbers: one format per kind, shared by the chapters and the ledger (no heavy imports)."""


def fmt(x: float) -> str:
    """Return x with 3 significant digits, or as a whole number with thousands separators from 1,000 up."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def pct(x: float) -> str:
    """Return a share as a percentage with one decimal, never rounding a share below 1 up to 100% (or above 0 to 0%)."""
    if 0.999 <= x < 1:
        return "more than 99.9%"
    if 0 < x < 0.001:
        return "less than 0.1%"
    return f"{x:.1%}"

"""Quantities the book reports on more than one page: which glued values must carry one value (one definition, one
sample), which measure one quantity on different samples (each page names its own), and a scan of a built book for
one quantity reported with different values (issue 21, item 9)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Quantity:
    """One quantity shown on several pages: `same` are glue names that must all carry one value; `samples` maps glue
    names of the same quantity measured on another sample to that sample, which its page names."""

    name: str
    same: tuple[str, ...]
    samples: tuple[tuple[str, str], ...] = ()


QUANTITIES = (
    Quantity("the model's context n_ctx", ("setup_n_ctx", "pos_n_ctx", "sem_n_ctx", "len_n_ctx", "pc_n_ctx", "osc_n_ctx")),
    Quantity("the layer-0 SAE's training context", ("setup_context", "pos_context", "sem_context", "len_context",
                                                     "pc_context")),
    Quantity("the vocabulary size", ("pos_d_vocab", "sem_d_vocab")),
    Quantity("the count of positional features", ("pos_n_positional", "sem_n_positional", "len_n_positional",
                                                   "pos_cov_n_features")),
    Quantity("the positional-feature threshold on R²_pos", ("pos_threshold", "sem_positional_threshold")),
    Quantity("the restore factor of the length fixes", ("len_restore_factor", "pc_restore_factor")),
    Quantity("turns of the model's W_pos", ("turns", "osc_wpos_turns")),
    Quantity("turns of GPT-2 small's W_pos", ("gpt2_turns", "osc_gpt2_turns")),
    Quantity("held-out tokens of sae_lens's evals", ("heldout_tokens", "len_setup_tokens", "sem_text_inputs")),
    Quantity("the layer-0 SAE's explained variance (sae_lens's evals)", ("explained_variance",
                                                                         "len_setup_explained_variance")),
    Quantity("the norm of the last W_pos row", ("last_norm", "len_last_norm")),
    Quantity("the norm of the row before the last", ("last_previous_norm", "len_last_previous_norm")),
    Quantity("the cosine of the last W_pos row to the one before", ("last_cosine_to_previous",
                                                                      "len_last_cosine_to_previous")),
    Quantity("the layer-0 SAE's nMSE inside its context",
             ("len_heldout_in", "len_fix_sae_in", "len_fix_b_in", "len_fix_c_in"),
             (("len_setup_nmse", "sae_lens's evals over the setup chapter's held-out tokens"),
              ("pc_sae_nmse_in", "the past-context chapter's windows of n_ctx + 1 tokens"))),
    Quantity("the layer-0 SAE's nMSE past its context", ("len_heldout_past", "len_fix_sae_past"),
             (("pc_sae_nmse_past", "the past-context chapter's windows of n_ctx + 1 tokens"),)),
    Quantity("the top-3 principal-component share of the model's W_pos", (),
             (("top3", "rows 1..n_ctx-1"), ("pos_top3", "the rows inside the SAE's context"))),
    Quantity("the model's clean next-token loss", ("ce_clean",),
             (("osc_ce_normal", "the oscillation chapter's windows, positions 1.."),
              ("pc_clean_in", "the past-context chapter's windows, positions inside the SAE's context"),
              ("pc_clean_past", "the past-context chapter's windows, positions past the SAE's context"))),
)

# glue names (after their chapter's prefix) that several pages use for different quantities, and why
DISTINCT = {
    "threshold": "each chapter's own threshold (R²_pos, R²_tok, cosine)",
    "n_tokens": "each chapter's own sample of text",
    "n_heldout_tokens": "each chapter's own held-out sample (its parameter)",
    "heldout_inputs": "each chapter's own held-out sample",
    "n_saes": "each chapter's own SAEs",
}

PREFIXES = ("setup_", "pos_", "sem_", "len_", "osc_", "pc_", "match_", "ledger_")


def _suffix(name: str) -> str:
    """Return a glue name without its chapter's prefix."""
    return next((name[len(p):] for p in PREFIXES if name.startswith(p)), name)


def _equal(a: object, b: object) -> bool:
    """Return whether two glued values are one value (floats to 1e-9 relative)."""
    if isinstance(a, numbers.Number) and isinstance(b, numbers.Number):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def conflicts(values: pd.DataFrame, quantities: tuple[Quantity, ...] = QUANTITIES) -> pd.DataFrame:
    """Return, for a book's glued values (glued.values_frame: chapter, name, value), every glue name of a quantity's
    `same` group whose value differs from the group's first one present (quantity, name, chapter, value, expected)."""
    by_name = {n: (c, v) for c, n, v in values[["chapter", "name", "value"]].itertuples(index=False)}
    rows = []
    for q in quantities:
        present = [n for n in q.same if n in by_name]
        for n in present[1:]:
            if not _equal(by_name[n][1], by_name[present[0]][1]):
                rows.append({"quantity": q.name, "name": n, "chapter": by_name[n][0], "value": by_name[n][1],
                             "expected": by_name[present[0]][1], "from": present[0]})
    return pd.DataFrame(rows, columns=["quantity", "name", "chapter", "value", "expected", "from"])


def undeclared(values: pd.DataFrame, quantities: tuple[Quantity, ...] = QUANTITIES,
               distinct: dict[str, str] = DISTINCT) -> pd.DataFrame:
    """Return the numbers glued on two or more pages under one name (their chapter's prefix dropped) with different
    values, where neither a Quantity nor DISTINCT declares them (suffix, chapter, name, value): a scan for one quantity
    reported with different values."""
    declared = {n for q in quantities for n in (*q.same, *(s for s, _ in q.samples))}
    num = values[values["value"].map(lambda v: isinstance(v, numbers.Number) and not isinstance(v, bool))]
    num = num.assign(suffix=num["name"].map(_suffix))
    rows = []
    for suffix, group in num.groupby("suffix"):
        if group["chapter"].nunique() < 2 or suffix in distinct:
            continue
        group = group[~group["name"].isin(declared)]
        first = group["value"].iloc[0] if len(group) else None
        if group["chapter"].nunique() >= 2 and not all(_equal(v, first) for v in group["value"]):
            rows.extend({"suffix": suffix, "chapter": c, "name": n, "value": v}
                        for c, n, v in group[["chapter", "name", "value"]].itertuples(index=False))
    return pd.DataFrame(rows, columns=["suffix", "chapter", "name", "value"])


def _shown(v: object) -> str:
    """Return a glued number as the table shows it."""
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else str(v)


def quantity_table(values: pd.DataFrame, quantities: tuple[Quantity, ...] = QUANTITIES) -> pd.DataFrame:
    """Return per quantity found on two or more pages: its pages and values where one definition and one sample give
    one value, and those it is measured on with other samples (which sample)."""
    by_name = {n: (c.replace("_", " "), v) for c, n, v in values[["chapter", "name", "value"]].itertuples(index=False)}
    rows = []
    for q in quantities:
        same = [n for n in q.same if n in by_name]
        other = [(n, s) for n, s in q.samples if n in by_name]
        if len({by_name[n][0] for n in same} | {by_name[n][0] for n, _ in other}) < 2:
            continue
        values_same = sorted({_shown(by_name[n][1]) for n in same})
        rows.append({"quantity": q.name,
                     "one value on": ", ".join(sorted({by_name[n][0] for n in same})) or "—",
                     "value": " ≠ ".join(values_same) or "—",
                     "other samples": "; ".join(f"{_shown(by_name[n][1])} on {by_name[n][0]} ({s})" for n, s in other)
                     or "—"})
    return pd.DataFrame(rows, columns=["quantity", "one value on", "value", "other samples"])


def quantities_sentence(values: pd.DataFrame, quantities: tuple[Quantity, ...] = QUANTITIES) -> str:
    """Return what the scan found: how many quantities appear on two or more pages, and any reported with two values."""
    table, bad, loose = quantity_table(values, quantities), conflicts(values, quantities), undeclared(values, quantities)
    found = (f"{len(table)} quantities appear on two or more pages. " if len(table) else
             "No quantity appears on two pages. ")
    if bad.empty and loose.empty:
        return found + ("Each carries one value wherever one definition and one sample give it, and no number glued "
                        "under one name on two pages differs without the table naming why.")
    parts = [f"{r.name} on {r.chapter} is {_shown(r.value)}, not {_shown(r.expected)} ({r.quantity})"
             for r in bad.itertuples()]
    parts += [f"{r.name} on {r.chapter} is {_shown(r.value)}" for r in loose.itertuples()]
    return found + "These disagree: " + "; ".join(parts) + "."

"""Length generalization of layer-0 SAEs: reconstruction error vs position, spurious firing past the context, fixes.

A layer-0 SAE reads ``x(t, p) = W_E[t] + W_pos[p]``. Trained on contexts of ``C = context_size`` tokens, it never saw
the rows ``W_pos[p]`` for ``p >= C``. :func:`analyze` measures, for one SAE, everything the chapter shows:

* reconstruction error per position, on held-out text (:func:`heldout_position_sums`) and over the all-token
  distribution (:func:`all_token_position_sums`), beside three baselines (:data:`BASELINE_LABELS`): a random
  direction with the input's norm (the study's "random vector of the same norm"), a random direction with the
  reconstruction's norm (both exact expectations, :func:`random_baseline_sse`), and the mean input inside the context
  (:func:`with_mean_baseline`). Errors go into one :class:`possae.metrics.PositionSums` per distribution and are
  reported with possae.metrics's measures: ``mse`` (mean of ``||x - x_hat||^2``) and ``nmse``, the MSE over the
  total variance of the inputs inside the context (positions ``possae.hooks.in_context_positions``: 1..C-1), so
  that the input-weighted mean of the per-position curve inside the context is the pooled nMSE there
  (``1 - explained_variance``, sae_lens's definition). Special tokens (BOS) are left out, as in sae_lens's evals;
* spurious firing: with the split ``h_i(t, p) = a_i(t) + c_i(p)`` of :func:`possae.layer0_stats.encoder_parts`,
  feature ``i`` fires on ``(t, p)`` iff ``a_i(t) + c_i(p) > thr_i``. The pair ``(t, i)`` never fires inside the
  context iff ``a_i(t) + max_{p in 1..C-1} c_i(p) <= thr_i``, and is *spurious* at ``p >= C`` iff it fires there.
  :func:`spurious_and_firing_counts` counts such tokens per (position, feature) over the whole vocabulary, exactly,
  one feature chunk at a time (sort each feature's ``a`` over the vocabulary, then binary-search the thresholds), and
  every firing there, so that the share of firings past the context that are spurious is pooled over positions;
* where the SAE "thinks" it is past the context: the in-context position whose positional-feature pattern is most
  like each past position's (:func:`as_if_positions`);
* four fixes (:func:`reconstructions`): (a) encode the token embedding alone and add the true ``W_pos[p]`` back;
  (b) past the context, read the token at the last trained position ``C - 1`` and move the output to ``p``
  (:func:`token_tables`); (c) past the context, keep the SAE's output for the token part (non-positional features)
  and replace the positional part by the true ``W_pos[p]`` (:class:`LengthFixes`, :func:`token_part_offset`);
  (d) an SAE trained on full contexts as a control.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from sae_lens import SAE
from torch import Tensor

from possae.devices import default_device
from possae.hooks import (
    LAYER0_INPUT,
    POS_EMBED,
    TOKEN_EMBED,
    hook_activations,
    in_context_positions,
    require_layer0,
    sae_context_size,
)
from possae.layer0_stats import (
    Layer0Stats,
    check_layer0_inputs,
    choose_method,
    encoder_parts,
    layer0_stats_from_model,
    round_down,
)
from possae.intervals import LEVEL, N_BLOCKS, Interval, filled_blocks, jackknife
from possae.numbers import fmt, pct
from possae.thresholds import RESTORE_FACTOR, SAME_BAND
from possae.metrics import (
    PositionSums,
    mse_by_position,
    nmse_by_position,
    pooled_nmse,
    reconstruction_sums,
    sae_quality,
    total_variance,
)
from possae.params import Layer0Params, ParameterError
from possae.positional import (
    POSITIONAL_R2,
    fires_inside,
    peak_positions,
    positional_features,
    positional_profile_frame,
    r2_pos_inside,
    top_positional_features,
)
from possae.progress import tqdm
from possae.tokenizer import special_token_ids

SAE_LABEL = "SAE"
RANDOM_LABEL = "random, input's norm"  # the study's "random vector of the same norm": E||x - r||^2 = 2 ||x||^2
RANDOM_REC_LABEL = "random, reconstruction's norm"  # E||x - r||^2 = ||x||^2 + ||x_hat||^2: grows with the output
MEAN_LABEL = "mean input"  # the constant reconstruction: the mean of x over the positions inside the context
BASELINE_LABELS = (RANDOM_LABEL, RANDOM_REC_LABEL, MEAN_LABEL)
TOKEN_ONLY_LABEL = "(a) SAE(W_E[t]) + W_pos[p]"
CLAMP_LABEL = "(b) token read at position C-1"
SWAP_LABEL = "(c) positional features -> true W_pos"
CONTROL_LABEL = "(d) full-context SAE"
FIX_LABELS = {"a": TOKEN_ONLY_LABEL, "b": CLAMP_LABEL, "c": SWAP_LABEL, "d": CONTROL_LABEL}
FAR_COSINE = 0.5  # a row of W_pos is "far" from the context if no in-context row has a higher cosine with it
# a past position acts "as if at" an in-context position q when their positional-feature patterns have cosine >= this:
# q's pattern then carries cos^2 >= 81% of the past pattern's squared length, most of it
ASIF_COSINE = 0.9
ASIF_TIE = 1e-6  # in-context positions within this cosine of the best one tie; the closest in norm wins
ACTS_PER_BATCH = 2**24  # SAE activations held at once by the held-out pass (64 MB in float32)


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthParams(Layer0Params):
    """The length-generalization chapter's parameters (the names of its parameters cell)."""

    control_sae_id: str | None = "relu-full"
    n_heldout_tokens: int = 16384
    n_vocab_sample: int = 256
    seed: int = 0

    def validate(self) -> None:
        """Raise ParameterError unless both sample sizes are positive."""
        for name in ("n_heldout_tokens", "n_vocab_sample"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be >= 1; got {getattr(self, name)}.")


def load_subjects(params: LengthParams):
    """Return (model, sae, control): the layer-0 SAE, its model, and the full-context control SAE (None if not named)."""
    from possae.loaders import load_model_and_sae, load_sae_for

    model, sae = load_model_and_sae(params.sae_release, params.sae_id, device=params.device,
                                    model_name=params.model_name)
    require_layer0(sae, "The length-generalization chapter")
    control = None
    if params.control_sae_id is not None:
        control = load_sae_for(model, params.sae_release, params.control_sae_id, device=params.device)
        require_layer0(control, "The full-context control")
    return model, sae, control


# ----------------------------------------------------------------------------------------------
# Number formatting for tables and sentences
# ----------------------------------------------------------------------------------------------


def times_phrase(past: float, inside: float) -> str:
    """Return how `past` compares with `inside`: 'N times its value inside' or 'about its value inside'."""
    if inside <= 0:
        return "against nothing inside" if past > 0 else "nothing, as inside"
    r = past / inside
    return "about its value inside" if 1 / SAME_BAND <= r <= SAME_BAND else f"{fmt(r)} times its value inside"


def span(positions: range) -> str:
    """Return a position range as text, e.g. '1–63' (or '5' for one position)."""
    return f"{positions.start}" if len(positions) == 1 else f"{positions.start}–{positions.stop - 1}"


# ----------------------------------------------------------------------------------------------
# Reconstructions
# ----------------------------------------------------------------------------------------------


def random_baseline_sse(x: Float[Tensor, "batch d_in"], x_hat: Float[Tensor, "batch d_in"]) -> dict[str, Float[Tensor, " batch"]]:
    """Return the squared error of each random baseline for each input, exactly as its expectation: a uniformly
    random direction u (E u = 0) scaled to a norm r gives ``E||x - r u||^2 = ||x||^2 + r^2``. With r = ||x|| (the
    study's baseline, RANDOM_LABEL) that is ``2 ||x||^2``; with r = ||x_hat|| (RANDOM_REC_LABEL),
    ``||x||^2 + ||x_hat||^2``, which grows with the reconstruction's own norm. In that order."""
    x2 = x.detach().pow(2).sum(-1)
    return {RANDOM_LABEL: 2 * x2, RANDOM_REC_LABEL: x2 + x_hat.detach().to(x.device, x.dtype).pow(2).sum(-1)}


def error_sums(x: Float[Tensor, "batch d_in"], recons: dict[str, Float[Tensor, "batch d_in"]]) -> dict[str, Tensor]:
    """Return reconstruction_sums of x for each method, with the random baselines' exact errors
    (:func:`random_baseline_sse` of the SAE's output) placed right after the SAE's."""
    rest = reconstruction_sums(x, recons)
    head = {k: rest.pop(k) for k in ("x", "x2", f"sse:{SAE_LABEL}")}
    return {**head, **{f"sse:{k}": v for k, v in random_baseline_sse(x, recons[SAE_LABEL]).items()}, **rest}


def sample_tokens(d_vocab: int, n: int, seed: int = 0, exclude: list[int] | tuple[int, ...] = ()) -> Int[Tensor, " n"]:
    """Return n distinct token ids drawn uniformly from the vocabulary less `exclude` (sorted), or all of them if fewer."""
    if n <= 0:
        raise ValueError(f"n must be positive; got {n}.")
    allowed = torch.ones(d_vocab, dtype=torch.bool)
    allowed[torch.tensor(list(exclude), dtype=torch.long)] = False
    ids = allowed.nonzero().squeeze(1)
    if n >= len(ids):
        return ids
    return ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))[:n]].sort().values


@dataclass
class LengthFixes:
    """What fix (c) needs: the context size, which features are positional, and the token part's offset."""

    context_size: int
    positional: Bool[Tensor, " d_sae"]
    offset: Float[Tensor, " d_in"]


@torch.no_grad()
def token_part_offset(stats: Layer0Stats, sae: SAE, W_E: Float[Tensor, "d_vocab d_model"], context_size: int,
                      positional: Bool[Tensor, " d_sae"]) -> Float[Tensor, " d_model"]:
    """Return kappa = b_dec + (non-positional mean activation over positions 1..C-1) @ W_dec - mean_t W_E[t].

    It is the bias, over all tokens (uniform, as in `stats`) and the positions inside the context, of
    ``f(x)[non-positional] @ W_dec + b_dec`` as an estimate of ``W_E[t]``; fix (c) subtracts it.
    """
    inside = _inside_mask(stats.positions, context_size)
    f_bar = stats.mean[inside].mean(0) * (~positional.cpu()).double()
    W_dec, b_dec = sae.W_dec.detach().double().cpu(), sae.b_dec.detach().double().cpu()
    return b_dec + f_bar @ W_dec - W_E.detach().double().cpu().mean(0)


@torch.no_grad()
def length_fixes(stats: Layer0Stats, sae: SAE, W_E: Float[Tensor, "d_vocab d_model"], context_size: int,
                 threshold: float = POSITIONAL_R2) -> LengthFixes:
    """Return the LengthFixes of an SAE from its exact layer-0 statistics (positional: R2_pos inside the context >= threshold)."""
    positional = positional_features(stats, context_size, threshold)
    return LengthFixes(context_size, positional, token_part_offset(stats, sae, W_E, context_size, positional))


@torch.no_grad()
def sae_reconstruct(sae: SAE, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_in"]:
    """Return sae.decode(sae.encode(x)), with x moved to the SAE's device and dtype."""
    return sae.decode(sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype)))


@dataclass
class TokenTables:
    """Per-token reconstructions for fixes (a) and (b): a map token id -> row (-1: absent) and two tables."""

    index: Int[Tensor, " d_vocab"]
    alone: Float[Tensor, "n_unique d_in"]  # SAE(W_E[t])
    clamped: Float[Tensor, "n_unique d_in"]  # SAE(W_E[t] + W_pos[C-1]) - W_pos[C-1]


@torch.no_grad()
def token_tables(sae: SAE, W_E: Float[Tensor, "d_vocab d_model"], W_pos: Float[Tensor, "n_ctx d_model"],
                 tokens: Int[Tensor, "..."], context_size: int, batch_size: int = 4096) -> TokenTables:
    """Return TokenTables for the distinct tokens in `tokens`: SAE(W_E[t]), and SAE(W_E[t] + W_pos[C-1]) - W_pos[C-1]."""
    _check_context(context_size, W_pos.shape[0])
    uniq = tokens.flatten().unique().cpu()
    index = torch.full((W_E.shape[0],), -1, dtype=torch.long)
    index[uniq] = torch.arange(len(uniq))
    E = W_E.detach()[uniq.to(W_E.device)].to(sae.W_enc.device, sae.W_enc.dtype)
    last = W_pos.detach()[context_size - 1].to(E.device, E.dtype)

    def table(shift: Tensor) -> Tensor:
        return torch.cat([sae_reconstruct(sae, E[i : i + batch_size] + shift) - shift
                          for i in range(0, len(uniq), batch_size)])

    return TokenTables(index, table(torch.zeros_like(last)), table(last))


@torch.no_grad()
def reconstructions(
    x: Float[Tensor, "batch d_in"],
    tokens: Int[Tensor, " batch"],
    positions: Int[Tensor, " batch"],
    sae: SAE,
    W_pos: Float[Tensor, "n_ctx d_in"],
    fixes: LengthFixes | None = None,
    tables: TokenTables | None = None,
    control: SAE | None = None,
) -> dict[str, Float[Tensor, "batch d_in"]]:
    """Return each method's reconstruction of x (on the SAE's device): the SAE, the fixes, the control (the random
    baselines need no vector: :func:`random_baseline_sse` gives their errors exactly).

    With C = fixes.context_size, and the SAE's own output at p < C for (b) and (c):
    (a) ``SAE(W_E[t]) + W_pos[p]`` at every position;
    (b) for ``p >= C``: ``SAE(W_E[t] + W_pos[C-1]) - W_pos[C-1] + W_pos[p]``;
    (c) for ``p >= C``: ``(f with positional features zeroed) @ W_dec + b_dec - fixes.offset + W_pos[p]``
    (assumes the decoder is ``f @ W_dec + b_dec``); (d) the control SAE's reconstruction.
    """
    dev, dt = sae.W_enc.device, sae.W_enc.dtype
    x = x.to(dev, dt)
    pos = positions.to(dev)
    f = sae.encode(x)
    x_hat = sae.decode(f)
    out = {SAE_LABEL: x_hat}
    if fixes is not None:
        Wp = W_pos.detach().to(dev, dt)[pos]
        past = (pos >= fixes.context_size)[:, None]
        if tables is not None:
            rows = tables.index.to(dev)[tokens.to(dev)]
            if bool((rows < 0).any()):
                raise ValueError("tables lack some of the tokens: build them from the same tokens.")
            out[TOKEN_ONLY_LABEL] = tables.alone.to(dev, dt)[rows] + Wp
            out[CLAMP_LABEL] = torch.where(past, tables.clamped.to(dev, dt)[rows] + Wp, x_hat)
        P = fixes.positional.to(dev)
        swapped = x_hat - f[:, P] @ sae.W_dec.detach()[P] - fixes.offset.to(dev, dt) + Wp
        out[SWAP_LABEL] = torch.where(past, swapped, x_hat)
    if control is not None:
        out[CONTROL_LABEL] = sae_reconstruct(control, x).to(dev, dt)
    return out


# ----------------------------------------------------------------------------------------------
# Reconstruction error vs position
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def layer0_input_gap(model, tokens: Int[Tensor, "batch pos"]) -> float:
    """Return max |hook_resid_pre(0) - (hook_embed + hook_pos_embed)| over `tokens` (0 when x = W_E[t] + W_pos[p])."""
    names = (TOKEN_EMBED, POS_EMBED, LAYER0_INPUT)
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names, stop_at_layer=1)
    return float((cache[LAYER0_INPUT] - cache[TOKEN_EMBED] - cache[POS_EMBED]).abs().max())


@torch.no_grad()
def heldout_position_sums(
    model,
    sae: SAE,
    tokens: Int[Tensor, "n_windows pos"],
    fixes: LengthFixes | None = None,
    control: SAE | None = None,
    batch_size: int | None = None,
    ignore: list[int] | tuple[int, ...] = (),
    progress: bool | None = None,
) -> PositionSums:
    """Return PositionSums (x, x2, sse:<method>) of every method on the layer-0 input over token windows.

    Methods: the SAE, both random baselines (input's and reconstruction's norm), the fixes and the control; the
    mean-input baseline needs the in-context mean first and is added afterwards (:func:`with_mean_baseline`). The position of an input is its column; inputs whose token is in `ignore` (special tokens) are left out.
    batch_size: windows per batch; None keeps a batch's activations near ACTS_PER_BATCH (window length x d_sae each).
    """
    require_layer0(sae, "heldout_position_sums")
    if tokens.ndim != 2 or tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"tokens must be (n_windows, <= n_ctx={model.cfg.n_ctx}); got {tuple(tokens.shape)}.")
    n = tokens.shape[1]
    if batch_size is None:
        batch_size = max(1, ACTS_PER_BATCH // (n * sae.cfg.d_sae))
    keep_tokens = ~torch.isin(tokens, torch.tensor(list(ignore), dtype=tokens.dtype))
    tables = token_tables(sae, model.W_E, model.W_pos, tokens, fixes.context_size) if fixes is not None else None
    sums = PositionSums.empty(n)
    starts = range(0, len(tokens), batch_size)
    for i in tqdm(starts, desc="held-out errors", delay=2.0, leave=False, disable=progress is False):
        batch = tokens[i : i + batch_size]
        keep = keep_tokens[i : i + batch_size].flatten()
        x = hook_activations(model, batch.to(model.cfg.device), LAYER0_INPUT)
        x = x.flatten(0, 1)[keep.to(x.device)]
        pos = torch.arange(n).repeat(len(batch))[keep]
        recons = reconstructions(x, batch.flatten()[keep], pos, sae, model.W_pos, fixes, tables, control)
        sums.add(pos, **error_sums(x.to(sae.W_enc.device, sae.W_enc.dtype), recons))
    return sums


@torch.no_grad()
def all_token_position_sums(
    W_E_rows: Float[Tensor, "n_tokens d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    first: int = 1,
    batch_rows: int = 4096,
    method: str = "auto",
    progress: bool | None = None,
) -> PositionSums:
    """Return PositionSums (x, x2, sse:SAE, sse:<each random baseline>) on x = W_E_rows[t] + W_pos[p], every t, p >= first,
    in N_BLOCKS parts: token row t goes to part t mod N_BLOCKS (for jackknife intervals over the token sample).

    The "exact" method encodes through the split ``a(t) + c(p)`` (one matmul for the tokens, one for the positions);
    "brute_force" calls sae.encode on every input. Both decode with sae.decode.
    """
    path = choose_method(sae, method)
    dev, dt = sae.W_enc.device, sae.W_enc.dtype
    V, n = W_E_rows.shape[0], W_pos.shape[0]
    E = W_E_rows.detach().to(dev, dt)
    P = W_pos.detach().to(dev, dt)
    if path == "exact":
        s, W_enc, c, thr = encoder_parts(W_pos.detach(), sae, dev)
        A = (E.to(W_enc.dtype) * s) @ W_enc
        c, thr = c.to(W_enc.dtype), thr.to(W_enc.dtype)
        relu = bool((thr == 0).all())
    sums = PositionSums.empty(n, N_BLOCKS)
    tc = min(V, batch_rows)
    pc = max(1, batch_rows // tc)
    blocks = [(p0, t0) for p0 in range(first, n, pc) for t0 in range(0, V, tc)]
    buf = torch.empty(pc * tc * sae.cfg.d_sae, dtype=A.dtype, device=dev) if path == "exact" else None
    for p0, t0 in tqdm(blocks, desc="all-token errors", delay=2.0, leave=False, disable=progress is False):
        p1, t1 = min(p0 + pc, n), min(t0 + tc, V)
        x = (P[p0:p1, None, :] + E[None, t0:t1, :]).reshape(-1, E.shape[1])
        if path == "exact":
            pre = buf[: (p1 - p0) * (t1 - t0) * A.shape[1]].view(p1 - p0, t1 - t0, A.shape[1])
            torch.add(c[p0:p1, None, :], A[None, t0:t1, :], out=pre)
            f = pre.relu_() if relu else pre.mul_(pre > thr)
            f = f.view(-1, f.shape[-1]).to(dt)
        else:
            f = sae.encode(x)
        x_hat = sae.decode(f)
        pos = torch.arange(p0, p1).repeat_interleave(t1 - t0)
        part = torch.arange(t0, t1).repeat(p1 - p0) % N_BLOCKS
        values = error_sums(x, {SAE_LABEL: x_hat})
        for b in range(N_BLOCKS):
            rows = (part == b).nonzero().squeeze(1)
            if len(rows):
                sums.add(pos[rows], b, **{k: v[rows.to(v.device)] for k, v in values.items()})
    return sums


def token_sample_intervals(sums: PositionSums, context_size: int) -> dict[str, Interval]:
    """Return the SAE's all-token nMSE inside and past the context and their ratio, with jackknife intervals over the
    blocks of the vocabulary sample (all_token_position_sums deals token rows into blocks)."""
    def figures(block: int | None) -> dict[str, float]:
        e = error_summary(sums.leave_out(block), SAE_LABEL, context_size)
        return {"in": e.nmse_in, "past": e.nmse_past, "ratio": e.ratio}

    return jackknife(figures, filled_blocks(sums))


def interval_text(iv: Interval) -> str:
    """Return an interval as prose: 'a to b' (3 significant digits), or 'not measurable' without one."""
    return f"{fmt(iv.low)} to {fmt(iv.high)}" if math.isfinite(iv.low) else "not measurable (too few tokens)"


def alltok_interval_sentence(intervals: dict[str, Interval], n_tokens: int) -> str:
    """Return the sentence giving the all-token figures' intervals over the vocabulary sample, and whether the
    failure past the context (the ratio above RESTORE_FACTOR) holds over the whole interval."""
    if not intervals:
        return ""
    ratio = intervals["ratio"]
    holds = ("so a larger vocabulary sample would not change the conclusion" if ratio.low > RESTORE_FACTOR else
             f"so a larger vocabulary sample could bring it within {RESTORE_FACTOR:g} times")
    return (f"Over this sample of {n_tokens:,} vocabulary tokens, the {LEVEL:.0%} jackknife intervals (over "
            f"{min(N_BLOCKS, n_tokens)} blocks of tokens) are {interval_text(intervals['in'])} inside and "
            f"{interval_text(intervals['past'])} past the context; past over inside is {interval_text(ratio)}, "
            f"{holds}.")


def with_mean_baseline(sums: PositionSums, context_size: int) -> PositionSums:
    """Return a copy of sums with sse:MEAN_LABEL, the error of the constant reconstruction m = the mean input inside
    the context (positions 1..C-1 of this distribution), placed after the last random baseline.

    Exact from the sums: at each position, ``sum ||x - m||^2 = x2 - 2 m . x + n ||m||^2``; so its pooled nMSE inside
    the context is 1 (up to rounding).
    """
    inside, _ = context_masks(sums, context_size)
    X, X2 = sums.totals["x"], sums.totals["x2"]
    m = X[inside].sum(0) / sums.n[inside].sum()
    sse = (X2 - 2 * (X @ m) + sums.n * (m @ m)).clamp(min=0.0)
    methods = [k for k in methods_of(sums) if k != MEAN_LABEL]
    after = max((i for i, k in enumerate(methods) if k in BASELINE_LABELS or k == SAE_LABEL), default=-1)
    order = methods[: after + 1] + [MEAN_LABEL] + methods[after + 1 :]
    totals = {k: v for k, v in sums.totals.items() if not k.startswith("sse:")}
    totals |= {f"sse:{k}": sse if k == MEAN_LABEL else sums.totals[f"sse:{k}"] for k in order}
    return PositionSums(sums.n.clone(), totals)


def methods_of(sums: PositionSums) -> list[str]:
    """Return the reconstruction methods a PositionSums holds, in the order they were added."""
    return [k.removeprefix("sse:") for k in sums.totals if k.startswith("sse:")]


def _inside_mask(positions: Int[Tensor, " n_pos"], context_size: int) -> Bool[Tensor, " n_pos"]:
    """Return the mask of `positions` inside the SAE's context (possae.hooks.in_context_positions), checked non-empty."""
    inside = in_context_positions(context_size, context_size)
    mask = (positions >= inside.start) & (positions < inside.stop)
    if not bool(mask.any()):
        raise ValueError(f"no position inside the context ({span(inside)}) among the {len(positions)} given.")
    return mask


def context_masks(sums: PositionSums, context_size: int) -> tuple[Bool[Tensor, " n_pos"], Bool[Tensor, " n_pos"]]:
    """Return the masks of the positions with inputs inside the context (1..C-1) and past it (C..)."""
    inside = in_context_positions(context_size, sums.n_pos)
    return sums.mask(inside.start, inside.stop), sums.mask(context_size)


def error_curves(sums: PositionSums, context_size: int) -> pd.DataFrame:
    """Return one row per (method, position with inputs): inputs, mse and nmse (over the in-context inputs' variance)."""
    reference, _ = context_masks(sums, context_size)
    seen = sums.n > 0
    positions = torch.arange(sums.n_pos)[seen].numpy()
    return pd.concat([pd.DataFrame({
        "method": m, "position": positions, "inputs": sums.n[seen].numpy(),
        "mse": mse_by_position(sums, m)[seen].numpy(),
        "nmse": nmse_by_position(sums, m, reference)[seen].numpy(),
    }) for m in methods_of(sums)], ignore_index=True)


@dataclass(frozen=True)
class ErrorSummary:
    """One method's errors inside the context (positions 1..C-1) and past it: MSE, and nMSE over the inside variance.

    nmse_in is the pooled nMSE inside (1 - explained variance there); nmse_past is the MSE past the context over the
    same in-context variance, i.e. the input-weighted mean of the nMSE curve there.
    """

    mse_in: float
    mse_past: float
    nmse_in: float
    nmse_past: float

    @property
    def ratio(self) -> float:
        """Return nmse_past / nmse_in (= mse_past / mse_in: the same variance divides both)."""
        return self.nmse_past / self.nmse_in


def error_summary(sums: PositionSums, method: str, context_size: int) -> ErrorSummary:
    """Return a method's ErrorSummary from PositionSums."""
    inside, past = context_masks(sums, context_size)
    sse = sums.totals[f"sse:{method}"]
    mse_in = float(sse[inside].sum() / sums.n[inside].sum())
    mse_past = float(sse[past].sum() / sums.n[past].sum())
    var = total_variance(sums, inside)
    return ErrorSummary(mse_in, mse_past, pooled_nmse(sums, method, inside), mse_past / var)


def restores(summary: ErrorSummary, reference: ErrorSummary, factor: float = RESTORE_FACTOR) -> bool:
    """Return whether a method's nMSE past the context is within `factor` x the reference's nMSE inside it."""
    return summary.nmse_past <= factor * reference.nmse_in


def error_table(summaries: dict[tuple[str, str], ErrorSummary], context_size: int, n_ctx: int) -> pd.DataFrame:
    """Return the display table of (distribution, method) -> MSE and nMSE inside and past the context, and their ratio."""
    inside, past = span(in_context_positions(context_size, n_ctx)), span(range(context_size, n_ctx))
    rows = {key: {f"MSE, positions {inside}": fmt(s.mse_in), f"MSE, positions {past}": fmt(s.mse_past),
                  f"nMSE, positions {inside}": fmt(s.nmse_in), f"nMSE, positions {past}": fmt(s.nmse_past),
                  "past / inside": fmt(s.ratio)} for key, s in summaries.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["distribution", "method"])


def fix_table(summaries: dict[str, ErrorSummary], context_size: int, n_ctx: int) -> pd.DataFrame:
    """Return the display table of each fix's nMSE inside and past the context on held-out text, and whether it restores."""
    inside, past = span(in_context_positions(context_size, n_ctx)), span(range(context_size, n_ctx))
    ref = summaries[SAE_LABEL]
    rows = {m: {f"nMSE, positions {inside}": fmt(s.nmse_in), f"nMSE, positions {past}": fmt(s.nmse_past),
                "past / inside": fmt(s.ratio), "restores": "yes" if restores(s, ref) else "no"}
            for m, s in summaries.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


# ----------------------------------------------------------------------------------------------
# Positional features past the context
# ----------------------------------------------------------------------------------------------


def past_context_frame(stats: Layer0Stats, features: Int[Tensor, " k"], context_size: int) -> pd.DataFrame:
    """Return per feature: R2_pos inside the context, and mean activation / firing rate (max, mean) inside vs past it."""
    inside, past = _inside_mask(stats.positions, context_size), stats.positions >= context_size
    if not bool(past.any()):
        raise ValueError(f"stats hold no position >= context_size={context_size}.")
    idx = features.long()
    m, r = stats.mean[:, idx], stats.firing_rate[:, idx]
    return pd.DataFrame({
        "r2_pos_inside": r2_pos_inside(stats, context_size)[idx].numpy(),
        "peak_inside": peak_positions(stats, context_size)[idx].numpy(),
        "max_mean_inside": m[inside].max(0).values.numpy(),
        "max_mean_past": m[past].max(0).values.numpy(),
        "firing_rate_inside": r[inside].mean(0).numpy(),
        "firing_rate_past": r[past].mean(0).numpy(),
    }, index=pd.Index(idx.numpy(), name="feature"))


@dataclass(frozen=True)
class PastBehaviour:
    """How positional features behave past the context: count, shares silent / overshooting, mean firing rates."""

    features: int
    silent: float
    overshoot: float
    firing_rate_inside: float
    firing_rate_past: float


def past_behaviour(frame: pd.DataFrame, silent_ratio: float = 0.1) -> tuple[PastBehaviour | None, pd.DataFrame]:
    """Return (totals over all features, display table per in-context peak position) of a past_context_frame.

    Silent: firing rate past the context < silent_ratio x its rate inside. Overshooting: its largest mean activation
    past the context exceeds its largest inside. With no feature: (None, a one-row table of dashes).
    """
    columns = ["features", "silent past", "overshoot past", "firing rate inside", "firing rate past"]
    if frame.empty:
        return None, pd.DataFrame([["0"] + ["—"] * 4], columns=columns,
                                  index=pd.Index(["none"], name="peak position inside the context"))
    f = frame.assign(silent=frame.firing_rate_past < silent_ratio * frame.firing_rate_inside,
                     overshoot=frame.max_mean_past > frame.max_mean_inside)
    groups = [(str(k), g) for k, g in f.groupby("peak_inside")] + [("all", f)]
    rows = {k: [len(g), g.silent.mean(), g.overshoot.mean(), g.firing_rate_inside.mean(), g.firing_rate_past.mean()]
            for k, g in groups}
    total = PastBehaviour(len(f), *(float(v) for v in rows["all"][1:]))
    table = pd.DataFrame({k: [str(v[0])] + [f"{x:.0%}" for x in v[1:3]] + [f"{x:.1%}" for x in v[3:]]
                          for k, v in rows.items()}, index=columns).T
    return total, table.rename_axis("peak position inside the context")


def profiles_of(stats: Layer0Stats, features: Int[Tensor, " k"]) -> pd.DataFrame:
    """Return positional_profile_frame of some features (feature, position, mean, ...); an empty frame for none."""
    if len(features) == 0:
        return pd.DataFrame(columns=["position", "mean", "std", "firing_rate", "mean_preact", "feature"])
    return positional_profile_frame(stats, features)


def nearest_inside(W_pos: Float[Tensor, "n_ctx d_model"], context_size: int) -> pd.DataFrame:
    """Return per position the in-context position (1..C-1) whose W_pos row has the highest cosine with it, and that cosine."""
    _check_context(context_size, W_pos.shape[0])
    inside = in_context_positions(context_size, W_pos.shape[0])
    W = W_pos.detach().double().cpu()
    W = W / W.norm(dim=1, keepdim=True).clamp(min=1e-30)
    cos, q = (W @ W[inside.start : inside.stop].T).max(1)
    return pd.DataFrame({"nearest_inside": (q + inside.start).numpy(), "cosine": cos.numpy()},
                        index=pd.Index(range(W.shape[0]), name="position"))


def positional_code(stats: Layer0Stats, positional: Bool[Tensor, " d_sae"]) -> Float[Tensor, "n_pos k"]:
    """Return each position's positional-feature pattern: the mean activation of every positional feature there.

    The mean is over all tokens, uniformly weighted: the exact layer-0 statistics (``stats.mean``) that the chapter's
    positional profiles plot, i.e. ``E_t relu(a_i(t) + c_i(p))`` (with the SAE's own threshold), not the
    cruder ``relu(c_i(p) + mean_t a_i(t))``.
    """
    return stats.mean[:, positional.cpu()].double()


def as_if_positions(code: Float[Tensor, "n_pos k"], context_size: int, tie: float = ASIF_TIE) -> pd.DataFrame:
    """Return, for each position p >= C, the in-context position q in 1..C-1 whose pattern ``code[q]`` has the highest
    cosine with ``code[p]``, that cosine, and the norm ratio ``||code[p]|| / ||code[q]||`` (0 where code[q] is 0).

    Cosines within `tie` of the best tie (as when one feature alone is active at several positions, every one of them
    has cosine 1); among tied positions the one closest in norm to p wins, then the latest. A zero pattern (no
    positional feature active) has cosine 0 with every position.
    """
    _check_context(context_size, code.shape[0])
    inside = in_context_positions(context_size, code.shape[0])
    W = code.detach().double().cpu()
    norms = W.norm(dim=1)
    unit = W / norms[:, None].clamp(min=1e-300)
    past, cand = slice(context_size, None), slice(inside.start, inside.stop)
    cos = unit[past] @ unit[cand].T  # (n_past, C - 1)
    tied = cos >= cos.max(1, keepdim=True).values - tie
    gap = (norms[past, None] - norms[None, cand]).abs()
    score = torch.where(tied, -gap, torch.full_like(gap, -torch.inf)).flip(1)  # flipped: argmax takes the latest
    k = cos.shape[1] - 1 - score.argmax(1)
    q = k + inside.start
    nq = norms[q]
    ratio = torch.where(nq > 0, norms[past] / nq.clamp(min=1e-300), torch.zeros_like(nq))
    return pd.DataFrame({"as_if": q.numpy(), "cosine": cos.gather(1, k[:, None]).squeeze(1).numpy(),
                         "norm_ratio": ratio.numpy()},
                        index=pd.Index(range(context_size, code.shape[0]), name="position"))


@dataclass(frozen=True)
class AsIfSummary:
    """Where the SAE acts as if it were, past the context (over the past positions of an as_if_positions frame).

    last_share / earlier_share: shares of the past positions whose nearest in-context pattern is position C-1's / an
    earlier position's (they sum to 1); median_q: the median of that nearest position; median_cosine: the median best
    cosine; matched_share: the share with a best cosine >= threshold; median_norm_ratio: the median of
    ||pattern at p|| / ||pattern at q||; features: the number of positional features.
    """

    last_share: float
    earlier_share: float
    median_q: float
    median_cosine: float
    matched_share: float
    median_norm_ratio: float
    threshold: float
    features: int


def as_if_summary(frame: pd.DataFrame, context_size: int, features: int, threshold: float = ASIF_COSINE) -> AsIfSummary:
    """Return the AsIfSummary of an as_if_positions frame."""
    last = frame.as_if == context_size - 1
    return AsIfSummary(float(last.mean()), float((~last).mean()), float(frame.as_if.median()),
                       float(frame.cosine.median()), float((frame.cosine >= threshold).mean()),
                       float(frame.norm_ratio.median()), threshold, features)


def as_if_sentence(s: AsIfSummary, context_size: int) -> str:
    """Return the sentence on where the SAE acts as if it were past the context: its last position, earlier positions,
    or neither (the median best cosine below the threshold)."""
    if s.features == 0:
        return "With no positional feature there is no positional pattern to compare, so no position it acts as if at."
    head = ("Read through its positional features alone (their mean activation over all tokens at each position), the "
            "SAE past the context ")
    if s.median_cosine < s.threshold:
        return (head + f"acts as if at no position it was trained on: the median best cosine with an in-context "
                f"position's pattern is {s.median_cosine:.2f}, below {s.threshold:g}, and only "
                f"{pct(s.matched_share)} of the past positions reach {s.threshold:g}. Its best matches, weak as they "
                f"are, are position {context_size - 1} for {pct(s.last_share)} of the past positions and earlier "
                f"ones for the rest (median nearest position {s.median_q:g}).")
    size = ("about as active" if 1 / SAME_BAND <= s.median_norm_ratio <= SAME_BAND
            else f"{fmt(s.median_norm_ratio)} times as active (median ratio of the two patterns' lengths)")
    if s.last_share >= s.earlier_share:
        share = "every position" if s.last_share == 1 else f"{pct(s.last_share)} of the positions"
        return (head + f"acts as if at its last position, {context_size - 1}: for {share} "
                f"past the context the nearest in-context pattern is that of position {context_size - 1} (median "
                f"cosine {s.median_cosine:.3f}), with the positional features {size}.")
    return (head + f"acts as if at earlier positions: for {pct(s.earlier_share)} of the positions past the context the "
            f"nearest in-context pattern is that of a position before {context_size - 1} (median nearest position "
            f"{s.median_q:g}, median cosine {s.median_cosine:.3f}), with the positional features {size}.")


def show_positions(context_size: int, n_ctx: int, *extra: int) -> list[int]:
    """Return the positions a table shows: the last inside the context, the first two past it, the middle, the last."""
    return sorted({context_size - 1, context_size, min(context_size + 1, n_ctx - 1), (context_size + n_ctx) // 2,
                   n_ctx - 1, *extra})


def nearest_table(near: pd.DataFrame, context_size: int) -> pd.DataFrame:
    """Return the display table of nearest_inside at a few positions (including the one farthest from the context)."""
    past = near[near.index >= context_size]
    rows = near.loc[show_positions(context_size, len(near), int(past.cosine.idxmin()))]
    return pd.DataFrame({"nearest row inside the context": rows.nearest_inside,
                         "cosine": rows.cosine.map(lambda c: f"{c:.3f}")})


def firing_by_kind_frame(stats: Layer0Stats, positional: Bool[Tensor, " d_sae"]) -> pd.DataFrame:
    """Return per position the expected number of firing positional and non-positional features per token."""
    rate = stats.firing_rate
    return pd.DataFrame({"positional": rate[:, positional].sum(1).numpy(),
                         "non-positional": rate[:, ~positional].sum(1).numpy()},
                        index=pd.Index(stats.positions.numpy(), name="position"))


# ----------------------------------------------------------------------------------------------
# Spurious firing past the context
# ----------------------------------------------------------------------------------------------


def _check_context(context_size: int, n_pos: int) -> None:
    if not 2 <= context_size < n_pos:
        raise ValueError(f"context_size must lie in 2..{n_pos - 1} (W_pos has {n_pos} rows, position 0 holds BOS); "
                         f"got {context_size}.")


@torch.no_grad()
def _split_parts(W_E, W_pos, sae, context_size, device):
    """Return (E scaled, W_enc, c, thr, rounded never-inside threshold, rounded thresholds at every position).

    Feature i fires on (t, p) iff a_i(t) > tau[p, i]; the pair never fires inside the context iff a_i(t) <= tau_in[i].
    """
    check_layer0_inputs(W_E, W_pos, sae)
    choose_method(sae, "exact")
    _check_context(context_size, W_pos.shape[0])
    inside = in_context_positions(context_size, W_pos.shape[0])
    dev = default_device(device)
    s, W_enc, c, thr = encoder_parts(W_pos.detach(), sae, dev)
    E = W_E.detach().to(dev, sae.W_enc.dtype).to(W_enc.dtype) * s
    tau = thr[None, :] - c  # fires at (t, p) iff a(t) > tau(p)
    tau_in = round_down(tau[inside.start : inside.stop].min(0).values, W_enc.dtype)  # never inside iff a <= tau_in
    return E, W_enc, c, thr, tau_in, round_down(tau, W_enc.dtype)


@torch.no_grad()
def spurious_and_firing_counts(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    context_size: int,
    feature_chunk: int = 1024,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> tuple[Int[Tensor, "n_ctx d_sae"], Int[Tensor, " n_ctx"]]:
    """Return (spurious, firings): per (position, feature), the number of tokens on which the feature fires there but
    never inside the context (rows p < C are 0); and per position, the number of (token, feature) pairs that fire there.

    Inside the context: positions 1..C-1. Both exact over the whole vocabulary, from the same thresholds (so a
    position's spurious count never exceeds its firings); memory: feature_chunk x d_vocab at a time.
    """
    E, W_enc, c, thr, tau_in, tau = _split_parts(W_E, W_pos, sae, context_size, device)
    n, F = c.shape
    V = E.shape[0]
    counts = torch.zeros(n, F, dtype=torch.long)
    firings = torch.zeros(n, dtype=torch.long)
    starts = range(0, F, feature_chunk)
    for f0 in tqdm(starts, desc="spurious firing", delay=2.0, leave=False, disable=progress is False):
        f1 = min(f0 + feature_chunk, F)
        A = (W_enc[:, f0:f1].T @ E.T).sort(dim=1).values  # (chunk, d_vocab): each feature's a(t), sorted
        n_never = torch.searchsorted(A, tau_in[f0:f1, None].contiguous(), right=True)  # #{t: a <= tau_in}
        n_below = torch.searchsorted(A, tau[:, f0:f1].T.contiguous(), right=True)  # (chunk, n): #{t: a <= tau(p)}
        counts[context_size:, f0:f1] = (n_never - n_below[:, context_size:]).clamp(min=0).T.cpu()
        firings += (V - n_below).sum(0).cpu()
    return counts, firings


def spurious_counts(W_E: Float[Tensor, "d_vocab d_model"], W_pos: Float[Tensor, "n_ctx d_model"], sae: SAE,
                    context_size: int, feature_chunk: int = 1024, device: str | torch.device | None = None,
                    progress: bool | None = None) -> Int[Tensor, "n_ctx d_sae"]:
    """Return, per (position, feature), the number of tokens on which the feature fires there but never inside the
    context (the first half of :func:`spurious_and_firing_counts`)."""
    return spurious_and_firing_counts(W_E, W_pos, sae, context_size, feature_chunk, device, progress)[0]


def spurious_rate_frame(counts: Int[Tensor, "n_ctx d_sae"], d_vocab: int, positional: Bool[Tensor, " d_sae"],
                        l0: Float[Tensor, " n_ctx"], firings: Int[Tensor, " n_ctx"] | None = None) -> pd.DataFrame:
    """Return per position: spurious (token, feature) pairs per token, split positional / not, L0, their share of L0,
    and the counts over the vocabulary: spurious firings and all firings (the latter from `firings`, or l0 x d_vocab
    rounded when None).

    The share is 0 where L0 is 0 (no feature fires, so none fires spuriously).
    """
    per_tok = counts.double() / d_vocab
    total = per_tok.sum(1)
    l0 = l0.double()
    share = torch.where(l0 > 0, total / torch.where(l0 > 0, l0, torch.ones_like(l0)), torch.zeros_like(l0))
    fired = (l0 * d_vocab).round().long() if firings is None else firings.long()
    return pd.DataFrame({"spurious_per_token": total.numpy(),
                         "positional": per_tok[:, positional].sum(1).numpy(),
                         "non-positional": per_tok[:, ~positional].sum(1).numpy(),
                         "l0": l0.numpy(), "spurious_share_of_l0": share.numpy(),
                         "spurious_firings": counts.sum(1).long().numpy(), "firings": fired.numpy()},
                        index=pd.Index(range(counts.shape[0]), name="position"))


def spurious_table(rates: pd.DataFrame, context_size: int) -> pd.DataFrame:
    """Return the display table of spurious_rate_frame at a few positions around and past the context."""
    r = rates.loc[show_positions(context_size, len(rates))]
    return pd.DataFrame({"spurious pairs per token": r.spurious_per_token.map(fmt),
                         "of positional features": r.positional.map(fmt),
                         "of non-positional features": r["non-positional"].map(fmt),
                         "active features per token (L0)": r.l0.map(fmt),
                         "spurious share of L0": r.spurious_share_of_l0.map(lambda s: f"{s:.0%}")})


@dataclass(frozen=True)
class SpuriousExample:
    """The (feature, token) pair with the largest spurious activation, where, and at how many positions it fires."""

    feature: int
    token: int
    activation: float
    position: int
    n_positions: int


@torch.no_grad()
def spurious_example(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    context_size: int,
    features: Bool[Tensor, " d_sae"] | None = None,
    tokens: Bool[Tensor, " d_vocab"] | None = None,
    feature_chunk: int = 1024,
    device: str | torch.device | None = None,
) -> SpuriousExample | None:
    """Return the spurious (feature, token) pair, among `features` x `tokens` (default all), with the largest activation
    past the context; None if no allowed pair fires spuriously."""
    E, W_enc, c, thr, tau_in, tau = _split_parts(W_E, W_pos, sae, context_size, device)
    n, F = c.shape
    allowed_f = torch.ones(F, dtype=torch.bool) if features is None else features.cpu().bool()
    allowed_t = None if tokens is None else tokens.to(E.device).bool()
    if allowed_t is not None and allowed_t.shape[0] != E.shape[0]:
        raise ValueError(f"tokens must be a mask over the {E.shape[0]} tokens; got {allowed_t.shape[0]}.")
    c_past, p_best = c[context_size:].max(0)
    best = None
    for f0 in range(0, F, feature_chunk):
        f1 = min(f0 + feature_chunk, F)
        A = W_enc[:, f0:f1].T @ E.T  # (chunk, d_vocab)
        never = A <= tau_in[f0:f1, None]  # never fires inside the context
        if allowed_t is not None:
            never &= allowed_t[None, :]
        a_top, t_top = torch.where(never, A, torch.full_like(A, -float("inf"))).max(1)
        act = a_top.double() + c_past[f0:f1]  # its largest activation past the context (if it fires there)
        ok = never.any(1) & (act > thr[f0:f1]) & allowed_f[f0:f1].to(act.device)
        if not bool(ok.any()):
            continue
        act = torch.where(ok, act, torch.full_like(act, -float("inf")))
        k = int(act.argmax())
        if best is None or float(act[k]) > best[0]:
            best = (float(act[k]), f0 + k, int(t_top[k]), a_top[k])
    if best is None:
        return None
    act, i, t, a = best
    n_pos = int((a > tau[context_size:, i]).sum())
    return SpuriousExample(feature=i, token=t, activation=act, position=context_size + int(p_best[i]), n_positions=n_pos)


@torch.no_grad()
def feature_top_tokens(W_E: Float[Tensor, "d_vocab d_model"], W_pos: Float[Tensor, "n_ctx d_model"], sae: SAE,
                       feature: int, context_size: int, k: int = 10) -> pd.DataFrame:
    """Return the k tokens with the largest activation of `feature` inside the context (1..C-1), that activation and where."""
    E, W_enc, c, thr, _, _ = _split_parts(W_E, W_pos, sae, context_size, None)
    inside = in_context_positions(context_size, W_pos.shape[0])
    a = (E @ W_enc[:, feature]).double()
    c_in, p_in = c[inside.start : inside.stop, feature].max(0)
    act = a + c_in
    act = torch.where(act > thr[feature], act, torch.zeros_like(act))
    v, t = act.topk(min(k, len(act)))
    return pd.DataFrame({"token": t.cpu().numpy(), "max_activation_inside": v.cpu().numpy(),
                         "at_position": inside.start + int(p_in)})


# ----------------------------------------------------------------------------------------------
# Sentences whose wording depends on the numbers
# ----------------------------------------------------------------------------------------------


def _against(sae: float, base: float) -> str:
    """Return how `sae` compares with a baseline's `base`: 'N times', 'about' or 'below' that, with the value."""
    r = sae / base if base > 0 else float("inf")
    if 1 / SAME_BAND <= r <= SAME_BAND:
        return f"within {SAME_BAND - 1:.0%} of"
    if r > 1:
        return f"{fmt(r)} times" if r < float("inf") else "infinitely many times"
    return f"{fmt(1 / r)} times smaller than"


def random_sentence(sae_past: float, random_past: float, randrec_past: float) -> str:
    """Return how the SAE's nMSE past the context (held-out text) compares with the two random baselines: a random
    direction with the input's norm (the study's reading of "a random vector of the same norm") and one with the
    reconstruction's norm (which grows with the SAE's own output, so cannot tell a long output from a wrong one)."""
    r = sae_past / random_past
    verdict = ("its output is farther from its input than a random guess of the right length"
               if r > SAME_BAND else "its output is about as far from its input as a random guess of the right length"
               if r >= 1 / SAME_BAND else "its output keeps part of the input's direction")
    first = (f"Past the context the SAE's nMSE on held-out text, {fmt(sae_past)}, is {_against(sae_past, random_past)} "
             f"that of a random vector with the input's norm ({fmt(random_past)}): {verdict}.")
    rr = sae_past / randrec_past
    against = f" Against a random vector with the norm of the SAE's own output ({fmt(randrec_past)}) it is "
    if 1 / SAME_BAND <= rr <= SAME_BAND:
        against += (f"within {SAME_BAND - 1:.0%}: the output is about orthogonal to the input, so its error is set "
                    "by its length.")
    else:
        against += f"{_against(sae_past, randrec_past)} that."
    second = (against + " That baseline is not the study's reading: its expected error, ||x||² + ||x̂||², grows with "
              "the SAE's own output, so it cannot show whether the SAE does worse than random.")
    return first + second


def positional_sentence(n_positional: int, behaviour: PastBehaviour | None, context_size: int) -> str:
    """Return the sentence on what the positional features do past the context, or that there are none."""
    if behaviour is None or n_positional == 0:
        return (f"This SAE has no feature with R²_pos >= {POSITIONAL_R2} inside its context, so there is no positional "
                "feature to follow past it.")
    return (f"Of the {n_positional} positional features, {behaviour.silent:.0%} fall silent past the context (firing "
            f"rate below a tenth of their rate inside it) and {behaviour.overshoot:.0%} reach a higher mean activation "
            f"past the context than anywhere inside it; on average they fire on {behaviour.firing_rate_inside:.1%} of "
            f"the (token, position) inputs inside the context and on {behaviour.firing_rate_past:.1%} past it.")


def nearest_sentence(near: pd.DataFrame, context_size: int, far: float = FAR_COSINE) -> str:
    """Return the sentence on how far the rows of W_pos past the context are from every row inside it."""
    past = near[near.index >= context_size]
    p, cos = int(past.cosine.idxmin()), float(past.cosine.min())
    share = float((past.cosine < far).mean())
    if share == 0:
        return (f"Every row of W_pos past the context has an in-context row with a cosine above {far} (the lowest best "
                f"cosine is {cos:.2f}, at position {p}): no row points away from everything the SAE saw.")
    return (f"For {share:.0%} of the positions past the context, no in-context row has a cosine above {far} with "
            f"W_pos[p]; at position {p} the best cosine is {cos:.2f}: the row points away from everything the SAE saw.")


@dataclass(frozen=True)
class SpuriousSummary:
    """Spurious firing past the context, over the whole vocabulary.

    mean, max (and where): spurious pairs per token, over the past positions; share_of_l0: the MEAN OVER PAST
    POSITIONS of each position's spurious share of L0; non_positional: share of the spurious pairs that belong to
    non-positional features; n_spurious / n_firings: spurious (token, feature) firings / all firings, summed over the
    past positions, whose ratio is the pooled share.
    """

    mean: float
    max: float
    max_position: int
    share_of_l0: float
    non_positional: float
    n_spurious: int
    n_firings: int

    @property
    def pooled_share(self) -> float:
        """Return the share of all (token, feature) firings past the context that are spurious (0 with no firing)."""
        return self.n_spurious / self.n_firings if self.n_firings > 0 else 0.0


def spurious_summary(rates: pd.DataFrame, context_size: int) -> SpuriousSummary:
    """Return the SpuriousSummary of a spurious_rate_frame over the positions past the context."""
    past = rates[rates.index >= context_size]
    total = float(past.spurious_per_token.sum())
    return SpuriousSummary(float(past.spurious_per_token.mean()), float(past.spurious_per_token.max()),
                           int(past.spurious_per_token.idxmax()), float(past.spurious_share_of_l0.mean()),
                           float(past["non-positional"].sum()) / total if total > 0 else 0.0,
                           int(past.spurious_firings.sum()), int(past.firings.sum()))


def spurious_sentence(s: SpuriousSummary) -> str:
    """Return the sentence on spurious firing past the context (its pooled share with both counts), or that there is none."""
    if s.max == 0:
        return "No feature fires past the context on a token it never fires on inside it: there is no spurious firing."
    return (f"Past the context a token fires on average {s.mean:,.1f} features it never fires inside it (at most "
            f"{s.max:,.1f}, at position {s.max_position}): over the whole vocabulary, {s.n_spurious:,} of the "
            f"{s.n_firings:,} (token, feature) firings past the context are spurious ({pct(s.pooled_share)}), and "
            f"{pct(s.non_positional)} of the spurious pairs belong to non-positional features.")


def example_sentence(example: SpuriousExample | None, token: str, top: str, top_act: float, n_past: int) -> str:
    """Return the sentence describing the example spurious pair, or that the search found none."""
    if example is None:
        return ("No non-positional feature that fires inside the context fires spuriously on a token of the held-out "
                "text: there is no example to show.")
    return (f"Feature {example.feature} is not positional (R²_pos < {POSITIONAL_R2} inside the context); there it fires "
            f"most on {top} (activation {top_act:.2f}) and never on {token}. Past the context it fires on {token} at "
            f"{example.n_positions} of the {n_past} positions, up to {example.activation:.2f} at position "
            f"{example.position}: the same kind of failure as the arrow feature firing on \"leep\" in the original "
            "study.")


def _verdict(s: ErrorSummary, ref: ErrorSummary) -> str:
    return "restores the SAE's in-context error" if restores(s, ref) else "does not restore the SAE's in-context error"


def fix_sentences(summaries: dict[str, ErrorSummary], non_positional_share: float, control_context: int | None,
                  n_ctx: int) -> dict[str, str]:
    """Return one sentence per fix ('a'..'d') on its nMSE inside and past the context and whether it restores the SAE."""
    ref, (a, b, c) = summaries[SAE_LABEL], (summaries[FIX_LABELS[k]] for k in "abc")
    out = {}
    out["a"] = (f"Fix (a) gives {fmt(a.nmse_past)} past the context and {fmt(a.nmse_in)} inside it, and "
                f"{_verdict(a, ref)}" + (
                    ": the SAE was trained on inputs that always carry a positional part, so a bare token embedding "
                    "is itself an input it never saw." if a.nmse_in > RESTORE_FACTOR * ref.nmse_in
                    else "; inside the context, dropping the position costs little."))
    out["b"] = (f"Fix (b) gives {fmt(b.nmse_past)} past the context and {_verdict(b, ref)}. By construction its error "
                "at p >= C is the SAE's error on the same token at position C - 1" + (
                    ": giving the SAE a position it knows, rather than none, is what (a) lacked."
                    if restores(b, ref) and not restores(a, ref) else "."))
    out["c"] = (f"Fix (c) gives {fmt(c.nmse_past)} past the context and {_verdict(c, ref)}" + (
        ": replacing the positional features' output leaves the spurious non-positional features in place, and they "
        "are the bulk of the error." if not restores(c, ref) and non_positional_share > 0.5 else "."))
    if CONTROL_LABEL not in summaries:
        out["d"] = "Fix (d) is skipped: this profile names no full-context SAE (control_sae_id is None)."
    else:
        d = summaries[CONTROL_LABEL]
        out["d"] = (f"Fix (d), the SAE trained on {control_context} positions, gives {fmt(d.nmse_past)} past the "
                    f"context and {fmt(d.nmse_in)} inside it, and {_verdict(d, ref)}" + (
                        ": trained on every position, it has no outside." if control_context == n_ctx else
                        f": it too stops at position {control_context - 1}."))
    return out


def fix_summary_sentence(summaries: dict[str, ErrorSummary]) -> str:
    """Return the one-line summary of every fix's nMSE past the context on held-out text."""
    parts = [f"({k}) {fmt(summaries[label].nmse_past)}" for k, label in FIX_LABELS.items() if label in summaries]
    missing = "" if CONTROL_LABEL in summaries else "; (d) not available on this profile"
    return f"Past the context, nMSE on held-out text: {', '.join(parts)}{missing}."


# ----------------------------------------------------------------------------------------------
# The chapter's one call
# ----------------------------------------------------------------------------------------------


@dataclass
class LengthResult:
    """Everything the length-generalization chapter shows: numbers for the prose, frames for figures and tables."""

    context_size: int
    n_ctx: int
    setup: dict[str, float]  # sae_quality on windows of context_size tokens, exactly as the setup chapter calls it
    input_gap: float
    heldout_inputs: int
    vocab_sample: int
    heldout_curves: pd.DataFrame  # error_curves, every method (the SAE, the three baselines, the fixes)
    alltok_curves: pd.DataFrame  # error_curves, the SAE and the three baselines
    summaries: dict[tuple[str, str], ErrorSummary]  # (distribution, method) -> ErrorSummary
    error_table: pd.DataFrame
    fix_table: pd.DataFrame
    n_positional: int
    behaviour: PastBehaviour | None
    behaviour_table: pd.DataFrame
    positional_profiles: pd.DataFrame  # positional_profile_frame of the top positional features
    nearest: pd.DataFrame
    nearest_table: pd.DataFrame
    as_if: pd.DataFrame  # as_if_positions: per past position, the in-context position it acts as if at
    as_if_summary: AsIfSummary
    last_row: dict[str, float]
    firing_by_kind: pd.DataFrame
    spurious_rates: pd.DataFrame
    spurious_table: pd.DataFrame
    spurious: SpuriousSummary
    example: SpuriousExample | None
    example_top_tokens: pd.DataFrame
    example_profile: pd.DataFrame  # token_activation_vs_position rows with a 'label' column
    example_strings: dict[str, str] = field(default_factory=dict)  # 'token', 'top'
    control_context: int | None = None
    alltok_intervals: dict[str, Interval] = field(default_factory=dict)  # the SAE's all-token nMSE: in, past, ratio

    @property
    def inside(self) -> range:
        """Return the positions inside the SAE's context (1..C-1)."""
        return in_context_positions(self.context_size, self.n_ctx)

    def fix_summaries(self) -> dict[str, ErrorSummary]:
        """Return the held-out ErrorSummary of the SAE and each fix (not the baselines), by method label."""
        return {m: s for (dist, m), s in self.summaries.items() if dist == "held-out text" and m not in BASELINE_LABELS}

    def fix_methods(self) -> list[str]:
        """Return the labels the fixes figure draws: the SAE and each fix (not the baselines)."""
        return list(self.fix_summaries())

    def glued(self) -> dict[str, object]:
        """Return every value the prose cites, by glue name (prefix len_)."""
        held, allt = self.summaries["held-out text", SAE_LABEL], self.summaries["all tokens", SAE_LABEL]
        at = self.firing_by_kind.index
        inside, past = (at >= self.inside.start) & (at < self.inside.stop), at >= self.context_size
        inside_mean = lambda kind: float(self.firing_by_kind[kind][inside].mean())  # noqa: E731
        past_mean = lambda kind: float(self.firing_by_kind[kind][past].mean())  # noqa: E731
        fixes = self.fix_summaries()
        base = {(dist, key): self.summaries[dist, label].nmse_past
                for dist in ("held-out text", "all tokens")
                for key, label in (("rand", RANDOM_LABEL), ("randrec", RANDOM_REC_LABEL), ("mean", MEAN_LABEL))}
        asif, spur = self.as_if_summary, self.spurious
        v = {
            "len_context": self.context_size, "len_n_ctx": self.n_ctx, "len_inside": span(self.inside),
            "len_past": span(range(self.context_size, self.n_ctx)),
            "len_setup_explained_variance": float(self.setup["explained_variance"]),
            "len_setup_nmse": float(self.setup["nmse"]), "len_setup_tokens": int(self.setup["tokens"]),
            "len_input_gap": self.input_gap, "len_heldout_inputs": self.heldout_inputs,
            "len_vocab_sample": self.vocab_sample,
            "len_heldout_in": held.nmse_in, "len_heldout_past": held.nmse_past,
            "len_heldout_mse_in": held.mse_in, "len_heldout_mse_past": held.mse_past,
            "len_heldout_change": times_phrase(held.nmse_past, held.nmse_in),
            "len_alltok_in": allt.nmse_in, "len_alltok_past": allt.nmse_past,
            "len_alltok_change": times_phrase(allt.nmse_past, allt.nmse_in),
            "len_alltok_interval_sentence": alltok_interval_sentence(self.alltok_intervals, self.vocab_sample),
            # baselines past the context: rand = random direction with the input's norm (the study's reading),
            # randrec = random direction with the reconstruction's norm, mean = the mean input inside the context
            **{f"len_{'heldout' if dist == 'held-out text' else 'alltok'}_{key}_past": x
               for (dist, key), x in base.items()},
            "len_sae_over_random": held.nmse_past / base["held-out text", "rand"],
            "len_sae_over_randrec": held.nmse_past / base["held-out text", "randrec"],
            "len_random_sentence": random_sentence(held.nmse_past, base["held-out text", "rand"],
                                                   base["held-out text", "randrec"]),
            "len_n_positional": self.n_positional,
            "len_positional_sentence": positional_sentence(self.n_positional, self.behaviour, self.context_size),
            "len_pos_silent": self.behaviour.silent if self.behaviour else 0.0,
            "len_nearest_sentence": nearest_sentence(self.nearest, self.context_size),
            "len_asif_last_share": asif.last_share, "len_asif_earlier_share": asif.earlier_share,
            "len_asif_median_q": asif.median_q, "len_asif_median_cosine": asif.median_cosine,
            "len_asif_matched_share": asif.matched_share, "len_asif_norm_ratio": asif.median_norm_ratio,
            "len_asif_threshold": asif.threshold,
            "len_asif_sentence": as_if_sentence(asif, self.context_size),
            **{f"len_last_{k}": float(x) for k, x in self.last_row.items()},
            "len_l0_positional_in": inside_mean("positional"), "len_l0_positional_past": past_mean("positional"),
            "len_l0_nonpositional_in": inside_mean("non-positional"),
            "len_l0_nonpositional_past": past_mean("non-positional"),
            "len_spurious_sentence": spurious_sentence(self.spurious),
            # len_spur_share: the POOLED share, len_spur_n_spurious / len_spur_n_firings over all past positions;
            # len_spur_share_posmean: the mean over past positions of each position's share
            "len_spur_mean": spur.mean, "len_spur_share": spur.pooled_share,
            "len_spur_n_spurious": spur.n_spurious, "len_spur_n_firings": spur.n_firings,
            "len_spur_share_posmean": spur.share_of_l0, "len_spur_nonpos": spur.non_positional,
            "len_example_sentence": example_sentence(self.example, self.example_strings.get("token", ""),
                                                     self.example_strings.get("top", ""),
                                                     float(self.example_top_tokens["max activation inside"].iloc[0])
                                                     if self.example else 0.0,
                                                     self.n_ctx - self.context_size),
            "len_example_short": (f"Feature {self.example.feature} firing on {self.example_strings['token']} is one "
                                  "example." if self.example else "The search found no example pair on held-out tokens."),
            "len_control": (f"Here: an SAE of the same release trained on {self.control_context} positions."
                            if self.control_context else
                            "This profile names no full-context SAE (control_sae_id is None), so fix (d) is skipped."),
            "len_fix_sae_in": fixes[SAE_LABEL].nmse_in, "len_fix_sae_past": fixes[SAE_LABEL].nmse_past,
            "len_restore_factor": RESTORE_FACTOR,
            **{f"len_fix_{k}_sentence": s for k, s in fix_sentences(
                fixes, self.spurious.non_positional, self.control_context, self.n_ctx).items()},
            "len_fix_summary": fix_summary_sentence(fixes),
        }
        for name in ("len_heldout_past", "len_heldout_mse_past", "len_alltok_past", "len_heldout_rand_past",
                     "len_heldout_randrec_past", "len_heldout_mean_past", "len_alltok_rand_past",
                     "len_alltok_randrec_past", "len_alltok_mean_past", "len_sae_over_random", "len_sae_over_randrec",
                     "len_fix_sae_past", "len_l0_nonpositional_past"):
            v[f"{name}_text"] = fmt(v[name])
        for k, label in FIX_LABELS.items():
            if label in fixes:
                v[f"len_fix_{k}_in"], v[f"len_fix_{k}_past"] = fixes[label].nmse_in, fixes[label].nmse_past
        return v


def _example_parts(model, sae: SAE, stats: Layer0Stats, positional: Bool[Tensor, " d_sae"], context_size: int,
                   tokens: Int[Tensor, "n_windows pos"]) -> tuple[SpuriousExample | None, pd.DataFrame, pd.DataFrame, dict]:
    """Return the example spurious pair among non-positional features and held-out tokens, its feature's top tokens
    (display table), the activation-vs-position profile of the spurious and the top token, and their strings."""
    from possae.semantic import token_activation_vs_position
    from possae.tokenizer import decode_tokens

    seen = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    seen[tokens.unique()] = True
    semantic = (~positional) & fires_inside(stats, context_size)
    example = spurious_example(model.W_E, model.W_pos, sae, context_size, features=semantic, tokens=seen)
    if example is None:
        return None, pd.DataFrame({"string": ["—"], "max activation inside": ["—"], "at position": ["—"]},
                                  index=pd.Index(["—"], name="token")), pd.DataFrame(columns=["token", "feature", "position", "activation", "label"]), {}
    top = feature_top_tokens(model.W_E, model.W_pos, sae, example.feature, context_size, k=10)
    strings = decode_tokens(model.tokenizer, top.token)
    token_string = decode_tokens(model.tokenizer, [example.token])[0]
    table = pd.DataFrame({"string": strings,
                          "max activation inside": top.max_activation_inside.map(lambda a: f"{a:.3f}").values,
                          "at position": top.at_position.values}, index=pd.Index(top.token.values, name="token"))
    top_token = int(top.token.iloc[0])
    labels = {example.token: f"{token_string} (spurious)", top_token: f"{strings[0]} (top token)"}
    profile = pd.concat([token_activation_vs_position(model.W_E, model.W_pos, sae, t, [example.feature],
                                                      method="brute_force").assign(label=labels[t])
                         for t in labels])
    return example, table, profile, {"token": token_string, "top": strings[0]}


def short_context(model, sae: SAE, chapter: str) -> int:
    """Return the context size C of a layer-0 SAE, raising unless C < the model's n_ctx (something lies past it)."""
    require_layer0(sae, chapter)
    C = sae_context_size(sae, model.cfg.n_ctx)
    if C >= model.cfg.n_ctx:
        raise ValueError(f"the SAE was trained on {C} >= n_ctx = {model.cfg.n_ctx} positions: nothing lies past its "
                         "context. Pick an SAE trained on shorter contexts, e.g. -p sae_id relu-short.")
    return C


@torch.no_grad()
def analyze(model, sae: SAE, params: LengthParams, control: SAE | None = None) -> LengthResult:
    """Return the LengthResult of a layer-0 SAE trained on a context shorter than the model's n_ctx."""
    from possae.heldout import heldout_windows
    from possae.wpos import last_row

    C, n_ctx = short_context(model, sae, "The length-generalization chapter"), model.cfg.n_ctx
    _check_context(C, n_ctx)
    if control is not None:
        require_layer0(control, "The full-context control")
    # the setup chapter's call and sample; the spliced-loss part it also runs does not touch explained variance
    setup = sae_quality(model, sae, heldout_windows(model.tokenizer, C, params.n_heldout_tokens), spliced_loss=False)
    stats = layer0_stats_from_model(model, sae, progress=False)
    fixes = length_fixes(stats, sae, model.W_E, C)
    ignore = special_token_ids(model.tokenizer)

    tokens = heldout_windows(model.tokenizer, n_ctx, params.n_heldout_tokens)
    held = heldout_position_sums(model, sae, tokens, fixes, control, ignore=ignore, progress=False)
    vocab = sample_tokens(model.cfg.d_vocab, params.n_vocab_sample, params.seed, exclude=ignore)
    allt = all_token_position_sums(model.W_E[vocab.to(model.W_E.device)], model.W_pos, sae,
                                   first=in_context_positions(C, n_ctx).start, progress=False)
    alltok_intervals = token_sample_intervals(allt, C)
    held, allt = with_mean_baseline(held, C), with_mean_baseline(allt, C)
    summaries = {**{("held-out text", m): error_summary(held, m, C) for m in methods_of(held)},
                 **{("all tokens", m): error_summary(allt, m, C) for m in methods_of(allt)}}
    shown = {k: s for k, s in summaries.items() if k[1] in (SAE_LABEL, *BASELINE_LABELS)}
    fix_summ = {m: s for (d, m), s in summaries.items() if d == "held-out text" and m not in BASELINE_LABELS}

    positional = fixes.positional
    behaviour, behaviour_table = past_behaviour(past_context_frame(stats, positional.nonzero().squeeze(1), C))
    near = nearest_inside(model.W_pos, C)
    as_if = as_if_positions(positional_code(stats, positional), C)
    counts, firings = spurious_and_firing_counts(model.W_E, model.W_pos, sae, C, progress=False)
    rates = spurious_rate_frame(counts, model.cfg.d_vocab, positional, stats.l0_by_position(), firings)
    del counts
    example, top_table, profile, strings = _example_parts(model, sae, stats, positional, C, tokens)
    return LengthResult(
        context_size=C, n_ctx=n_ctx, setup=setup, input_gap=layer0_input_gap(model, tokens[:4]),
        heldout_inputs=int(held.n.sum()), vocab_sample=len(vocab),
        heldout_curves=error_curves(held, C), alltok_curves=error_curves(allt, C), summaries=summaries,
        error_table=error_table(shown, C, n_ctx), fix_table=fix_table(fix_summ, C, n_ctx),
        n_positional=int(positional.sum()), behaviour=behaviour, behaviour_table=behaviour_table,
        positional_profiles=profiles_of(stats, top_positional_features(stats, C, k=8, per_peak=2)),
        nearest=near, nearest_table=nearest_table(near, C), as_if=as_if,
        as_if_summary=as_if_summary(as_if, C, int(positional.sum())), last_row=last_row(model.W_pos.detach()),
        firing_by_kind=firing_by_kind_frame(stats, positional), spurious_rates=rates,
        spurious_table=spurious_table(rates, C), spurious=spurious_summary(rates, C), example=example,
        example_top_tokens=top_table, example_profile=profile, example_strings=strings,
        control_context=None if control is None else sae_context_size(control, n_ctx),
        alltok_intervals=alltok_intervals,
    )

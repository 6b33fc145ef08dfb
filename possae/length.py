"""Length generalization of layer-0 SAEs: reconstruction error vs position, spurious firing past the context, fixes.

A layer-0 SAE reads ``x(t, p) = W_E[t] + W_pos[p]``. Trained on contexts of ``context_size`` tokens, it never saw
the rows ``W_pos[p]`` for ``p >= context_size``. This module measures what happens there:

* reconstruction error per position, on held-out text (:func:`heldout_position_errors`) and over the all-token
  distribution (:func:`all_token_position_errors`), beside a random reconstruction of equal norm
  (:func:`random_equal_norm`). Errors are accumulated per position in one pass (:class:`ErrorSums`) and reported as
  the MSE per dimension and the normalised MSE ``sum ||x - x_hat||^2 / sum ||x - x_bar||^2`` (sums over the inputs
  at one position, ``x_bar`` the mean input over the whole sample, all positions), so that ``1 - nmse`` is the
  variance explained, as in the setup chapter;
* spurious firing: with the split ``h_i(t, p) = a_i(t) + c_i(p)`` of :func:`possae.layer0_stats.encoder_parts`,
  feature ``i`` fires on ``(t, p)`` iff ``a_i(t) + c_i(p) > thr_i``. The pair ``(t, i)`` never fires inside the
  context iff ``a_i(t) + max_{p < context} c_i(p) <= thr_i``, and is *spurious* at ``p >= context`` iff it fires
  there. :func:`spurious_counts` counts such tokens per (position, feature) over the whole vocabulary, exactly, one
  feature chunk at a time (sort each feature's ``a`` over the vocabulary, then binary-search the thresholds);
* fixes (:func:`reconstructions`): (a) encode the token embedding alone and add the true ``W_pos[p]`` back;
  (a') past the context, read the token at the last trained position ``C - 1`` and move the output to ``p``
  (:func:`token_tables`); (b) past the context, keep the SAE's output for the token part (non-positional features)
  and replace the positional part by the true ``W_pos[p]`` (:class:`LengthFixes`, :func:`token_part_offset`);
  (c) an SAE trained on full contexts as a control.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from sae_lens import SAE
from torch import Tensor

from possae.devices import default_device
from possae.hooks import LAYER0_INPUT as LAYER0_HOOK
from possae.layer0_stats import (
    Layer0Stats,
    check_layer0_inputs,
    choose_method,
    encoder_parts,
    round_down,
)
from possae.positional import POSITIONAL_R2, peak_positions, positional_features, r2_pos_inside
from possae.progress import tqdm

SAE_LABEL = "SAE"
RANDOM_LABEL = "random, equal norm"
TOKEN_ONLY_LABEL = "(a) SAE(W_E[t]) + W_pos[p]"
CLAMP_LABEL = "(a') token read at position C-1"
SWAP_LABEL = "(b) positional features -> true W_pos"
CONTROL_LABEL = "(c) full-context SAE"
ACTS_PER_BATCH = 2**24  # SAE activations held at once by the held-out pass (64 MB in float32)


# ----------------------------------------------------------------------------------------------
# Per-position error accumulators
# ----------------------------------------------------------------------------------------------


@dataclass
class ErrorSums:
    """Per-position sums of a reconstruction pass: input count, sum of x, sum of ||x||^2, squared error per method."""

    n: Float[Tensor, " n_pos"]
    sx: Float[Tensor, "n_pos d_in"]
    sxx: Float[Tensor, " n_pos"]
    sse: dict[str, Float[Tensor, " n_pos"]]

    @classmethod
    def empty(cls, n_pos: int, d_in: int) -> ErrorSums:
        """Return zeroed accumulators (float64, on the CPU) for n_pos positions and inputs of width d_in."""
        z = dict(dtype=torch.float64)
        return cls(torch.zeros(n_pos, **z), torch.zeros(n_pos, d_in, **z), torch.zeros(n_pos, **z), {})

    def add(self, x: Float[Tensor, "batch d_in"], positions: Int[Tensor, " batch"],
            recons: dict[str, Float[Tensor, "batch d_in"]]) -> ErrorSums:
        """Return self after adding one batch of inputs, their positions and each method's reconstruction."""
        pos = positions.long().cpu()
        if pos.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} inputs but {pos.shape[0]} positions.")
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= self.n.shape[0]):
            raise ValueError(f"positions must lie in 0..{self.n.shape[0] - 1}; got {int(pos.min())}..{int(pos.max())}.")
        if self.sse and set(recons) != set(self.sse):
            raise ValueError(f"every batch must have the same methods: {sorted(self.sse)} vs {sorted(recons)}.")
        x = x.detach()
        idx = pos.to(x.device)
        n_pos, d = self.sx.shape

        def part(v: Tensor) -> Tensor:
            return torch.zeros(n_pos, *v.shape[1:], dtype=v.dtype, device=v.device).index_add_(0, idx, v)

        self.n += torch.bincount(pos, minlength=n_pos).double()
        self.sx += part(x).double().cpu()
        self.sxx += part(x.pow(2).sum(1)).double().cpu()
        for name, x_hat in recons.items():
            err = (x - x_hat.detach().to(x.device, x.dtype)).pow(2).sum(1)
            self.sse.setdefault(name, torch.zeros_like(self.n)).add_(part(err).double().cpu())
        return self


def error_frame(sums: ErrorSums) -> pd.DataFrame:
    """Return one row per (method, position): n, mse (per dimension), nmse (vs the sample mean) and rel_err (vs ||x||^2)."""
    n, d = sums.n, sums.sx.shape[1]
    if float(n.sum()) == 0:
        raise ValueError("no inputs were accumulated.")
    mu = sums.sx.sum(0) / n.sum()
    centred = sums.sxx - 2 * sums.sx @ mu + n * (mu @ mu)  # sum over inputs at p of ||x - mu||^2
    seen = n > 0
    rows = []
    for name, sse in sums.sse.items():
        rows.append(pd.DataFrame({
            "method": name,
            "position": torch.arange(len(n))[seen].numpy(),
            "n": n[seen].numpy(),
            "mse": (sse / (n * d))[seen].numpy(),
            "nmse": (sse / centred)[seen].numpy(),
            "rel_err": (sse / sums.sxx)[seen].numpy(),
        }))
    return pd.concat(rows, ignore_index=True)


def summary_frame(errors: pd.DataFrame, context_size: int, metric: str = "nmse") -> pd.DataFrame:
    """Return the mean of `metric` over positions < context_size and >= context_size, one row per method."""
    inside = errors[errors.position < context_size].groupby("method", sort=False)[metric].mean()
    past = errors[errors.position >= context_size].groupby("method", sort=False)[metric].mean()
    out = pd.DataFrame({f"{metric}, positions < {context_size}": inside, f"{metric}, positions >= {context_size}": past})
    out["past / inside"] = out.iloc[:, 1] / out.iloc[:, 0]
    return out


def restores(summary: pd.DataFrame, reference: str = SAE_LABEL, factor: float = 2.0) -> dict[str, bool]:
    """Return, per method of a summary_frame, whether its mean past the context is within `factor` x the reference's inside it."""
    if reference not in summary.index:
        raise ValueError(f"reference {reference!r} is not among the methods {list(summary.index)}.")
    bound = factor * float(summary.loc[reference].iloc[0])
    return {m: bool(summary.loc[m].iloc[1] <= bound) for m in summary.index}


def random_equal_norm(x_hat: Float[Tensor, "batch d_in"], generator: torch.Generator | None = None) -> Float[Tensor, "batch d_in"]:
    """Return vectors with the norms of x_hat's rows and independent uniformly random directions."""
    u = torch.randn(x_hat.shape, generator=generator, device=x_hat.device, dtype=x_hat.dtype)
    return u / u.norm(dim=-1, keepdim=True) * x_hat.norm(dim=-1, keepdim=True)


def sample_tokens(d_vocab: int, n: int, seed: int = 0) -> Int[Tensor, " n"]:
    """Return n distinct token ids drawn uniformly from the vocabulary (sorted), or all of them if n >= d_vocab."""
    if n <= 0:
        raise ValueError(f"n must be positive; got {n}.")
    if n >= d_vocab:
        return torch.arange(d_vocab)
    return torch.randperm(d_vocab, generator=torch.Generator().manual_seed(seed))[:n].sort().values


# ----------------------------------------------------------------------------------------------
# Fixes
# ----------------------------------------------------------------------------------------------


@dataclass
class LengthFixes:
    """What fix (b) needs: the context size, which features are positional, and the token part's offset."""

    context_size: int
    positional: Bool[Tensor, " d_sae"]
    offset: Float[Tensor, " d_in"]


@torch.no_grad()
def token_part_offset(stats: Layer0Stats, sae: SAE, W_E: Float[Tensor, "d_vocab d_model"], context_size: int,
                      positional: Bool[Tensor, " d_sae"]) -> Float[Tensor, " d_model"]:
    """Return kappa = b_dec + (non-positional mean activation over positions < context) @ W_dec - mean_t W_E[t].

    It is the bias, over all tokens (uniform, as in `stats`) and positions < context_size, of
    ``f(x)[non-positional] @ W_dec + b_dec`` as an estimate of ``W_E[t]``; fix (b) subtracts it.
    """
    inside = stats.positions < context_size
    if not bool(inside.any()):
        raise ValueError(f"stats hold no position < context_size={context_size}.")
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
    """Per-token reconstructions for fixes (a) and (a'): a map token id -> row (-1: absent) and two tables."""

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
    generator: torch.Generator | None = None,
) -> dict[str, Float[Tensor, "batch d_in"]]:
    """Return each method's reconstruction of x (on the SAE's device): SAE, random equal norm, the fixes, the control.

    With C = fixes.context_size, and the SAE's own output at p < C for (a') and (b):
    (a) ``SAE(W_E[t]) + W_pos[p]`` at every position;
    (a') for ``p >= C``: ``SAE(W_E[t] + W_pos[C-1]) - W_pos[C-1] + W_pos[p]``;
    (b) for ``p >= C``: ``(f with positional features zeroed) @ W_dec + b_dec - fixes.offset + W_pos[p]``
    (assumes the decoder is ``f @ W_dec + b_dec``); (c) the control SAE's reconstruction.
    """
    dev, dt = sae.W_enc.device, sae.W_enc.dtype
    x = x.to(dev, dt)
    pos = positions.to(dev)
    f = sae.encode(x)
    x_hat = sae.decode(f)
    out = {SAE_LABEL: x_hat, RANDOM_LABEL: random_equal_norm(x_hat, generator)}
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
    names = ("hook_embed", "hook_pos_embed", LAYER0_HOOK)
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names, stop_at_layer=1)
    return float((cache[LAYER0_HOOK] - cache["hook_embed"] - cache["hook_pos_embed"]).abs().max())


@torch.no_grad()
def heldout_position_errors(
    model,
    sae: SAE,
    tokens: Int[Tensor, "n_windows n_ctx"],
    fixes: LengthFixes | None = None,
    control: SAE | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Return error_frame of every method on the model's blocks.0.hook_resid_pre over token windows (position = column).

    batch_size: windows per batch; None keeps a batch's activations near ACTS_PER_BATCH (window length x d_sae each).
    """
    if sae.cfg.metadata.hook_name != LAYER0_HOOK:
        raise ValueError(f"the SAE reads {sae.cfg.metadata.hook_name!r}, not {LAYER0_HOOK!r}.")
    if tokens.ndim != 2 or tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"tokens must be (n_windows, <= n_ctx={model.cfg.n_ctx}); got {tuple(tokens.shape)}.")
    n = tokens.shape[1]
    if batch_size is None:
        batch_size = max(1, ACTS_PER_BATCH // (n * sae.cfg.d_sae))
    tables = token_tables(sae, model.W_E, model.W_pos, tokens, fixes.context_size) if fixes is not None else None
    sums = ErrorSums.empty(n, sae.cfg.d_in)
    gen = torch.Generator(device=sae.W_enc.device).manual_seed(seed)
    starts = range(0, len(tokens), batch_size)
    for i in tqdm(starts, desc="held-out errors", delay=2.0, leave=False, disable=progress is False):
        batch = tokens[i : i + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=LAYER0_HOOK, stop_at_layer=1)
        x = cache[LAYER0_HOOK].flatten(0, 1)
        pos = torch.arange(n).repeat(len(batch))
        recons = reconstructions(x, batch.flatten(), pos, sae, model.W_pos, fixes, tables, control, gen)
        sums.add(x, pos, recons)
    return error_frame(sums)


@torch.no_grad()
def all_token_position_errors(
    W_E_rows: Float[Tensor, "n_tokens d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    seed: int = 0,
    batch_rows: int = 4096,
    method: str = "auto",
    progress: bool | None = None,
) -> pd.DataFrame:
    """Return error_frame of the SAE and the random equal-norm reconstruction on x = W_E_rows[t] + W_pos[p], all t, p.

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
    sums = ErrorSums.empty(n, sae.cfg.d_in)
    gen = torch.Generator(device=dev).manual_seed(seed)
    tc = min(V, batch_rows)
    pc = max(1, batch_rows // tc)
    blocks = [(p0, t0) for p0 in range(0, n, pc) for t0 in range(0, V, tc)]
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
        sums.add(x, pos, {SAE_LABEL: x_hat, RANDOM_LABEL: random_equal_norm(x_hat, gen)})
    return error_frame(sums)


# ----------------------------------------------------------------------------------------------
# Positional features past the context
# ----------------------------------------------------------------------------------------------


def past_context_frame(stats: Layer0Stats, features: Int[Tensor, " k"], context_size: int) -> pd.DataFrame:
    """Return per feature: R2_pos inside the context, and mean activation / firing rate (max, mean) inside vs past it."""
    inside = stats.positions < context_size
    if not bool(inside.any()) or bool(inside.all()):
        raise ValueError(f"context_size={context_size} must split the stats' positions into two non-empty parts.")
    idx = features.long()
    m, r = stats.mean[:, idx], stats.firing_rate[:, idx]
    return pd.DataFrame({
        "r2_pos_inside": r2_pos_inside(stats, context_size)[idx].numpy(),
        "peak_inside": peak_positions(stats, context_size)[idx].numpy(),
        "peak_past": stats.positions[~inside][m[~inside].argmax(0)].numpy(),
        "max_mean_inside": m[inside].max(0).values.numpy(),
        "max_mean_past": m[~inside].max(0).values.numpy(),
        "mean_inside": m[inside].mean(0).numpy(),
        "mean_past": m[~inside].mean(0).numpy(),
        "firing_rate_inside": r[inside].mean(0).numpy(),
        "firing_rate_past": r[~inside].mean(0).numpy(),
    }, index=pd.Index(idx.numpy(), name="feature"))


def past_context_summary(frame: pd.DataFrame, silent_ratio: float = 0.1) -> pd.DataFrame:
    """Return, per in-context peak position of a past_context_frame: feature count, and shares silent / overshooting past it.

    Silent: firing rate past the context < silent_ratio x its rate inside. Overshooting: its largest mean activation
    past the context exceeds its largest inside.
    """
    f = frame.assign(silent=frame.firing_rate_past < silent_ratio * frame.firing_rate_inside,
                     overshoot=frame.max_mean_past > frame.max_mean_inside)
    out = f.groupby("peak_inside").agg(features=("silent", "size"), silent=("silent", "mean"),
                                       overshoot=("overshoot", "mean"), firing_rate_inside=("firing_rate_inside", "mean"),
                                       firing_rate_past=("firing_rate_past", "mean"))
    total = pd.DataFrame({"features": [len(f)], "silent": [f.silent.mean()], "overshoot": [f.overshoot.mean()],
                          "firing_rate_inside": [f.firing_rate_inside.mean()], "firing_rate_past": [f.firing_rate_past.mean()]},
                         index=pd.Index(["all"], name="peak_inside"))
    return pd.concat([out, total])


def nearest_inside(W_pos: Float[Tensor, "n_ctx d_model"], context_size: int) -> pd.DataFrame:
    """Return per position the in-context position (< context_size) whose W_pos row has the highest cosine with it, and that cosine."""
    _check_context(context_size, W_pos.shape[0])
    W = W_pos.detach().double().cpu()
    W = W / W.norm(dim=1, keepdim=True).clamp(min=1e-30)
    cos, q = (W @ W[:context_size].T).max(1)
    return pd.DataFrame({"nearest_inside": q.numpy(), "cosine": cos.numpy()},
                        index=pd.Index(range(W.shape[0]), name="position"))


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
    if not 1 <= context_size < n_pos:
        raise ValueError(f"context_size must lie in 1..{n_pos - 1} (W_pos has {n_pos} rows); got {context_size}.")


@torch.no_grad()
def _split_parts(W_E, W_pos, sae, context_size, device):
    """Return (E scaled, W_enc, c, thr, rounded never-inside threshold, rounded thresholds past the context)."""
    check_layer0_inputs(W_E, W_pos, sae)
    choose_method(sae, "exact")
    _check_context(context_size, W_pos.shape[0])
    dev = default_device(device)
    s, W_enc, c, thr = encoder_parts(W_pos.detach(), sae, dev)
    E = W_E.detach().to(dev, sae.W_enc.dtype).to(W_enc.dtype) * s
    tau = thr[None, :] - c  # fires at (t, p) iff a(t) > tau(p)
    tau_in = round_down(tau[:context_size].min(0).values, W_enc.dtype)  # never inside iff a <= tau_in
    tau_past = round_down(tau[context_size:], W_enc.dtype)
    return E, W_enc, c, thr, tau_in, tau_past


@torch.no_grad()
def spurious_counts(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    context_size: int,
    feature_chunk: int = 1024,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> Int[Tensor, "n_ctx d_sae"]:
    """Return, per (position, feature), the number of tokens on which the feature fires there but never inside the context.

    Rows p < context_size are 0. Exact over the whole vocabulary; memory: feature_chunk x d_vocab at a time.
    """
    E, W_enc, c, thr, tau_in, tau_past = _split_parts(W_E, W_pos, sae, context_size, device)
    n, F = c.shape
    counts = torch.zeros(n, F, dtype=torch.long)
    starts = range(0, F, feature_chunk)
    for f0 in tqdm(starts, desc="spurious firing", delay=2.0, leave=False, disable=progress is False):
        f1 = min(f0 + feature_chunk, F)
        A = (W_enc[:, f0:f1].T @ E.T).sort(dim=1).values  # (chunk, d_vocab): each feature's a(t), sorted
        n_never = torch.searchsorted(A, tau_in[f0:f1, None].contiguous(), right=True)  # #{t: a <= tau_in}
        n_below = torch.searchsorted(A, tau_past[:, f0:f1].T.contiguous(), right=True)  # #{t: a <= tau(p)}
        counts[context_size:, f0:f1] = (n_never - n_below).clamp(min=0).T.cpu()
    return counts


def spurious_rate_frame(counts: Int[Tensor, "n_ctx d_sae"], d_vocab: int, positional: Bool[Tensor, " d_sae"],
                        l0: Float[Tensor, " n_ctx"] | None = None) -> pd.DataFrame:
    """Return per position: spurious (token, feature) pairs per token, split positional / not, and their share of L0."""
    per_tok = counts.double() / d_vocab
    df = pd.DataFrame({"spurious_per_token": per_tok.sum(1).numpy(),
                       "positional": per_tok[:, positional].sum(1).numpy(),
                       "non-positional": per_tok[:, ~positional].sum(1).numpy()},
                      index=pd.Index(range(counts.shape[0]), name="position"))
    if l0 is not None:
        df["l0"] = l0.double().numpy()
        df["spurious_share_of_l0"] = df["spurious_per_token"] / df["l0"]
    return df


@dataclass
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
) -> SpuriousExample:
    """Return the spurious (feature, token) pair, among `features` x `tokens` (default all), with the largest activation past the context."""
    E, W_enc, c, thr, tau_in, tau_past = _split_parts(W_E, W_pos, sae, context_size, device)
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
        raise ValueError("no allowed (feature, token) pair fires spuriously past the context.")
    act, i, t, a = best
    n_pos = int((a > tau_past[:, i]).sum())
    return SpuriousExample(feature=i, token=t, activation=act, position=context_size + int(p_best[i]), n_positions=n_pos)


@torch.no_grad()
def feature_top_tokens(W_E: Float[Tensor, "d_vocab d_model"], W_pos: Float[Tensor, "n_ctx d_model"], sae: SAE,
                       feature: int, context_size: int, k: int = 10) -> pd.DataFrame:
    """Return the k tokens with the largest activation of `feature` inside the context, and that activation."""
    E, W_enc, c, thr, _, _ = _split_parts(W_E, W_pos, sae, context_size, None)
    a = (E @ W_enc[:, feature]).double()
    c_in, p_in = c[:context_size, feature].max(0)
    act = a + c_in
    act = torch.where(act > thr[feature], act, torch.zeros_like(act))
    v, t = act.topk(min(k, len(act)))
    return pd.DataFrame({"token": t.cpu().numpy(), "max_activation_inside": v.cpu().numpy(),
                         "at_position": int(p_in)})


def bos_slot_firing_sentence(behaviour: pd.DataFrame | None) -> str:
    """Return the sentence on the positional features peaking at position 0 (from past_context_summary), or that there are none."""
    if behaviour is None or 0 not in behaviour.index:
        return "No positional feature peaks at position 0, the slot that holds the BOS token in every training window."
    row = behaviour.loc[0]
    return (f"Position 0 holds the BOS token in every training window; the {row['features']:.0f} features that peak "
            f"there fire on {row['firing_rate_inside']:.1%} of the inputs inside the context and on "
            f"{row['firing_rate_past']:.1%} past it.")

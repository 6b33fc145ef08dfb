"""Exact activation statistics of a layer-0 SAE over every (token, position) input.

At ``blocks.0.hook_resid_pre`` the SAE's input is exactly ``x(t, p) = W_E[t] + W_pos[p]``, so the
whole input distribution is the product of the vocabulary and the positions and can be enumerated.
This module computes, over all tokens (uniform, or weighted by ``token_weights``, e.g. corpus
frequencies) and a chosen set of positions (uniform):

* per (position, feature): mean, standard deviation and firing rate (share of tokens whose activation
  is > 0) of the activation, and the mean pre-activation;
* per (token, feature): the mean activation over the positions, streamed in token chunks
  (:func:`token_feature_means`) or as top-k features per token (:func:`token_top_features`);
* per feature: the positional score ``max_p E_t f(t, p)``, its argmax position, and the share of
  the feature's variance explained by position, ``R2_pos = Var_p(E_t f) / Var(f)``, and by token,
  ``R2_tok = Var_t(E_p f) / Var(f)``, where ``f(t, p)`` is the activation and the variances are taken
  over the joint distribution (token weights x uniform positions). Both are defined as 0 where
  ``Var(f) = 0`` (numerically: ``Var(f) <= 1e-12 * E[f^2]``, which also covers dead features). A
  purely positional feature has ``R2_pos = 1, R2_tok = 0``; a purely token feature the reverse.

Two paths compute the same numbers:

``"exact"`` (sae_lens ``StandardSAE``, ``JumpReLUSAE`` and ``GatedSAE`` whose input normalisation is a fixed
scalar ``s``, i.e. ``normalize_activations`` "none" or "expected_average_only_in", which sae_lens
6.x leaves as the identity at inference, or any fixed rescaling patched into
``run_time_activation_norm_fn_in``) splits the pre-activation as ``h_i(t, p) = a_i(t) + c_i(p)`` with
``a = s W_E W_enc`` and ``c = (s W_pos - b_dec [if apply_b_dec_to_input]) W_enc + b_enc``. Feature i
fires iff ``h > thr_i`` with ``thr_i = max(threshold_i, 0)`` (0 for ReLU; sae_lens's JumpReLU is
``relu(h) * (h > threshold)``; a GatedSAE is the same with h its magnitude pre-activation, see
:func:`encoder_parts`), i.e. iff ``a_i(t) > tau_i(p) = thr_i - c_i(p)``, and then equals
``a_i(t) + c_i(p)``. With the thresholds of a feature sorted over positions, each token t only needs
``j = #{p : tau(p) < a(t)}`` (the number of positions at which it fires): the per-position sums
S0, S1, S2 of ``w``, ``w a``, ``w a^2`` over firing tokens are reverse cumulative sums of a
histogram over j, and the mean over positions is ``(j a + sum of the j largest c) / n_pos``. Only
tokens with ``a(t) > min_p tau(p)`` (those that fire somewhere) are touched after the unavoidable
matmul ``W_E W_enc``, which is streamed over feature chunks (on a CPU, and over cache-sized
token blocks within each chunk). Where most (token, feature) pairs of a chunk fire somewhere and its product is
small (DENSE_SHARE, DENSE_MAX_ENTRIES), the chunk is worked on whole instead of as a list of entries: the same sums,
without the list's indexing. Sums are float64; thresholds are
compared in the matmul's dtype with a round-down that keeps every comparison exact.

``"brute_force"`` (any SAE: TopK, per-input normalisation, hooks attached, ...)
streams token-chunk x position-chunk batches of inputs through ``sae.encode`` and reduces as it goes.

The caller must pass the model weights processed the way the SAE expects (e.g. a HookedTransformer
loaded with ``center_writing_weights`` if the SAE was trained on such a model); nothing here
rewrites W_E or W_pos. Mean pre-activations come from ``hook_sae_acts_pre`` on the brute-force path
(NaN if an SAE's ``encode`` never calls it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from sae_lens import SAE, GatedSAE, JumpReLUSAE, StandardSAE
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from possae.cache import cached
from possae.devices import default_device
from possae.hooks import require_layer0
from possae.metrics import ZERO_VAR_RTOL, r2_pos as r2_pos_of
from possae.progress import tqdm

METHODS = ("auto", "exact", "brute_force")
PER_INPUT_NORMS = ("constant_norm_rescale", "layer_norm")
EXACT_CLASSES = (StandardSAE, JumpReLUSAE, GatedSAE)


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass
class Layer0Stats:
    """Per-(position, feature) and per-feature activation statistics of a layer-0 SAE."""

    positions: Int[Tensor, " n_pos"]
    mean: Float[Tensor, "n_pos d_sae"]
    std: Float[Tensor, "n_pos d_sae"]
    firing_rate: Float[Tensor, "n_pos d_sae"]
    mean_preact: Float[Tensor, "n_pos d_sae"]
    positional_score: Float[Tensor, " d_sae"]
    argmax_position: Int[Tensor, " d_sae"]
    r2_pos: Float[Tensor, " d_sae"]
    r2_tok: Float[Tensor, " d_sae"]
    feature_mean: Float[Tensor, " d_sae"]
    feature_var: Float[Tensor, " d_sae"]
    path: str

    @property
    def d_sae(self) -> int:
        """Return the number of features."""
        return self.mean.shape[1]

    def l0_by_position(self) -> Float[Tensor, " n_pos"]:
        """Return the expected number of firing features at each position (token-weighted)."""
        return self.firing_rate.sum(1)

    def feature_frame(self) -> pd.DataFrame:
        """Return one row per feature: positional score, argmax position, R2s, mean, var, firing rates."""
        return pd.DataFrame(
            {
                "positional_score": self.positional_score.numpy(),
                "argmax_position": self.argmax_position.numpy(),
                "r2_pos": self.r2_pos.numpy(),
                "r2_tok": self.r2_tok.numpy(),
                "mean": self.feature_mean.numpy(),
                "var": self.feature_var.numpy(),
                "firing_rate": self.firing_rate.mean(0).numpy(),
                "max_firing_rate": self.firing_rate.max(0).values.numpy(),
            },
            index=pd.RangeIndex(self.d_sae, name="feature"),
        )

    def position_frame(self, feature: int) -> pd.DataFrame:
        """Return one row per position for one feature: mean, std, firing rate, mean pre-activation."""
        return pd.DataFrame(
            {
                "mean": self.mean[:, feature].numpy(),
                "std": self.std[:, feature].numpy(),
                "firing_rate": self.firing_rate[:, feature].numpy(),
                "mean_preact": self.mean_preact[:, feature].numpy(),
            },
            index=pd.Index(self.positions.numpy(), name="position"),
        )


# ----------------------------------------------------------------------------------------------
# Validation and method choice
# ----------------------------------------------------------------------------------------------


def check_layer0_inputs(W_E: Tensor, W_pos: Tensor, sae: SAE) -> None:
    """Raise ValueError unless the SAE reads blocks.0.hook_resid_pre and its d_in matches W_E, W_pos."""
    require_layer0(sae, "Exact layer-0 statistics (possae.layer0_stats)")
    if W_E.ndim != 2 or W_pos.ndim != 2:
        raise ValueError(f"W_E and W_pos must be 2-D (rows x d_model); got shapes {tuple(W_E.shape)}, {tuple(W_pos.shape)}.")
    if W_E.shape[1] != W_pos.shape[1]:
        raise ValueError(
            f"W_E has d_model {W_E.shape[1]} but W_pos has {W_pos.shape[1]}: pass both from the same model."
        )
    if sae.cfg.d_in != W_E.shape[1]:
        raise ValueError(
            f"SAE d_in is {sae.cfg.d_in} but the model's d_model is {W_E.shape[1]}: "
            "this SAE was not trained on this model's residual stream; pass the matching SAE or model."
        )


def resolve_positions(positions: Sequence[int] | Tensor | range | None, n_rows: int) -> Int[Tensor, " n_pos"]:
    """Return the requested positions as a long tensor, checked against W_pos's n_rows rows."""
    if positions is None:
        return torch.arange(n_rows)
    pos = torch.as_tensor(list(positions) if isinstance(positions, range) else positions).long().flatten().cpu()
    if pos.numel() == 0:
        raise ValueError("positions is empty: pass at least one position (default: all rows of W_pos).")
    if int(pos.min()) < 0:
        raise ValueError(f"positions must be >= 0; got {int(pos.min())}.")
    if int(pos.max()) >= n_rows:
        raise ValueError(
            f"position {int(pos.max())} is beyond W_pos, which has {n_rows} rows (positions 0..{n_rows - 1}); "
            f"pass positions within range({n_rows})."
        )
    if pos.unique().numel() != pos.numel():
        raise ValueError("positions contains duplicates: pass each position once (positions are weighted uniformly).")
    return pos


def resolve_token_weights(token_weights: Sequence[float] | Tensor | None, d_vocab: int) -> Float[Tensor, " d_vocab"]:
    """Return float64 token weights normalised to sum 1 (uniform if None), after checking them."""
    if token_weights is None:
        return torch.full((d_vocab,), 1.0 / d_vocab, dtype=torch.float64)
    w = torch.as_tensor(token_weights).detach().to("cpu", torch.float64).flatten()
    if w.numel() != d_vocab:
        raise ValueError(f"token_weights has {w.numel()} entries but d_vocab is {d_vocab}: pass one weight per token.")
    if not torch.isfinite(w).all():
        raise ValueError("token_weights contains NaN or inf: pass finite weights.")
    if (w < 0).any():
        raise ValueError(f"token_weights must be >= 0; {(w < 0).sum().item()} are negative (e.g. {w.min().item():.3g}).")
    total = w.sum()
    if total <= 0:
        raise ValueError("token_weights sum to 0: at least one token needs a positive weight.")
    return w / total


def _hooks_attached(sae: SAE) -> bool:
    """Return whether any of the SAE's hook points carries a hook (which the exact path would skip)."""
    return any(
        len(m._forward_hooks) or len(m._forward_pre_hooks) for m in sae.modules() if isinstance(m, HookPoint)
    )


@torch.no_grad()
def input_scale(sae: SAE) -> float | None:
    """Return the fixed scalar the SAE multiplies its input by before encoding, or None if it depends on the input."""
    if sae.cfg.normalize_activations in PER_INPUT_NORMS:
        return None
    x = torch.randn(2, sae.cfg.d_in, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (x * torch.tensor([[1.0], [3.0]], dtype=torch.float64)).to(sae.W_enc.device, sae.W_enc.dtype)
    y = sae.run_time_activation_norm_fn_in(x.clone())
    if not isinstance(y, Tensor) or y.shape != x.shape:
        return None
    x64, y64 = x.double(), y.double()
    s = (x64 * y64).sum(-1) / (x64 * x64).sum(-1)
    tol = 1e-5 if x.dtype != torch.float64 else 1e-10
    if not torch.allclose(y64, s[:, None] * x64, rtol=tol, atol=tol * float(y64.abs().max())):
        return None
    if not math.isclose(float(s[0]), float(s[1]), rel_tol=tol):
        return None
    return float(s[0])


def exact_unsupported_reason(sae: SAE) -> str | None:
    """Return why the exact path cannot reproduce this SAE's encode, or None when it can."""
    if not isinstance(sae, EXACT_CLASSES):
        return (
            f"{type(sae).__name__} (architecture {sae.cfg.architecture()!r}) has no affine pre-activation + "
            "ReLU/JumpReLU encode; only sae_lens StandardSAE, JumpReLUSAE and GatedSAE have an exact path"
        )
    if type(sae).encode not in tuple(c.encode for c in EXACT_CLASSES) or type(sae).process_sae_in is not SAE.process_sae_in:
        return f"{type(sae).__name__} overrides encode/process_sae_in"
    if not isinstance(sae.activation_fn, nn.ReLU):
        return f"activation_fn is {type(sae.activation_fn).__name__}, not ReLU"
    if getattr(sae.cfg, "reshape_activations", "none") != "none":
        return f"reshape_activations={sae.cfg.reshape_activations!r}"
    if _hooks_attached(sae):
        return "hooks are attached to the SAE's hook points"
    if input_scale(sae) is None:
        return (
            f"normalize_activations={sae.cfg.normalize_activations!r} rescales each input by its own statistics, "
            "so the pre-activation is not affine in the input"
        )
    return None


def choose_method(sae: SAE, method: str = "auto") -> str:
    """Return "exact" or "brute_force" for this SAE ("auto": exact whenever the SAE supports it)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    reason = exact_unsupported_reason(sae)
    if method == "exact" and reason is not None:
        raise ValueError(f"method='exact' is not available for this SAE: {reason}. Use method='brute_force' or 'auto'.")
    if method == "auto":
        return "exact" if reason is None else "brute_force"
    return method



# entries of W_E @ W_enc the exact path forms at a time (8 MB in float32): they are compared while still in a CPU's cache
CACHE_FLOATS = 1 << 21


def default_token_block(rows: int) -> int:
    """Return the tokens per block of the exact path's product on a CPU for `rows` features: CACHE_FLOATS entries."""
    return max(256, CACHE_FLOATS // max(rows, 1))


# the exact path forms a chunk's whole product (features x vocabulary) when it holds at most DENSE_MAX_ENTRIES entries,
# and works on it without an entry list where at least DENSE_SHARE of its (token, feature) pairs fire at some position
# (_dense_chunk_stats): there an entry list costs a nonzero, a sort into row order and a padded search per entry
DENSE_MAX_ENTRIES = 1 << 23
DENSE_SHARE = 0.5


def default_feature_chunk(device: torch.device | str) -> int:
    """Return the features per block of the exact path: 1,024 on a CPU (200 MB of W_E @ W_enc at gpt2 size), 8,192 on
    a GPU, where fewer blocks mean fewer waits on the device (0.57 s against 0.66 s on an H200)."""
    return 8192 if torch.device(device).type == "cuda" else 1024


def _work_dtype(sae: SAE) -> torch.dtype:
    """Return the dtype of the exact path's matmul: the SAE's, upcast to float32 if it is 16-bit."""
    dt = sae.W_enc.dtype
    return torch.float32 if dt in (torch.float16, torch.bfloat16) else dt


def _progress(iterable, total: int, desc: str, progress: bool | None):
    """Return the iterable wrapped in a tqdm bar that shows up only after 2 s (or never if progress is False)."""
    return tqdm(iterable, total=total, desc=desc, delay=2.0, disable=(progress is False), leave=False)


# ----------------------------------------------------------------------------------------------
# Exact path: building blocks
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def encoder_parts(
    W_pos_rows: Float[Tensor, "n_pos d_model"], sae: SAE, device: torch.device
) -> tuple[float, Float[Tensor, "d_model d_sae"], Float[Tensor, "n_pos d_sae"], Float[Tensor, " d_sae"]]:
    """Return (scale s, encoder matrix, positional part c in float64, firing threshold in float64).

    The feature is ``(a + c) * 1[a + c > thr]`` with ``a = s W_E @ matrix``. Standard: thr = 0. JumpReLU:
    thr = max(theta, 0). Gated: the magnitude pre-activation ``h = e^r z + b_mag`` (z = input @ W_enc) is
    the one that counts, with matrix ``W_enc e^r`` and thr = max(b_mag - e^r b_gate, 0), since the gate
    ``z + b_gate > 0`` is ``h > b_mag - e^r b_gate``.
    """
    s = input_scale(sae)
    dt = _work_dtype(sae)
    f64 = dict(device=device, dtype=torch.float64)
    W_enc = sae.W_enc.detach().to(device, dt)
    if isinstance(sae, GatedSAE):
        W_enc = sae.W_enc.detach().to(device) * sae.r_mag.detach().to(device).exp()
        W_enc = W_enc.to(dt)
        bias = sae.b_mag.detach().to(**f64)
        thr = (bias - sae.r_mag.detach().to(**f64).exp() * sae.b_gate.detach().to(**f64)).clamp(min=0.0)
    elif isinstance(sae, JumpReLUSAE):
        bias = sae.b_enc.detach().to(**f64)
        thr = sae.threshold.detach().to(**f64).clamp(min=0.0)
    else:
        bias = sae.b_enc.detach().to(**f64)
        thr = torch.zeros(sae.cfg.d_sae, **f64)
    pos_in = W_pos_rows.to(device, sae.W_enc.dtype).to(dt) * s
    if sae.cfg.apply_b_dec_to_input:
        pos_in = pos_in - sae.b_dec.detach().to(device, dt)
    c = (pos_in @ W_enc).double() + bias
    return s, W_enc, c, thr


def round_down(x: Float[Tensor, "..."], dtype: torch.dtype) -> Float[Tensor, "..."]:
    """Return the largest values of dtype <= x, so that for y of dtype: y > x iff y > round_down(x)."""
    y = x.to(dtype)
    if dtype == x.dtype:
        return y
    above = y.double() > x.double()
    return torch.where(above, torch.nextafter(y, torch.full_like(y, -math.inf)), y)


@dataclass
class PositionTables:
    """Per-feature thresholds sorted over positions and the matching prefix sums of c."""

    order: Int[Tensor, "d_sae n_pos"]  # positions sorted by ascending threshold tau = thr - c
    tau: Float[Tensor, "d_sae n_pos"]  # sorted thresholds, rounded down to the matmul dtype
    c_cum: Float[Tensor, "d_sae n_pos_plus_1"]  # c_cum[:, j] = sum of c over the j lowest-threshold positions


def position_tables(
    cT: Float[Tensor, "d_sae n_pos"], thr: Float[Tensor, " d_sae"], dtype: torch.dtype
) -> PositionTables:
    """Return thresholds tau = thr - c sorted over positions per feature, with prefix sums of c in that order.

    The thresholds are rounded down to the matmul dtype before they are sorted: rounding down keeps their order (ties
    aside, and tied thresholds fire together), and sorting 32-bit keys takes half the time of sorting 64-bit ones.
    """
    tau, order = round_down(thr[:, None] - cT, dtype).sort(dim=1)
    c_cum = torch.zeros(cT.shape[0], cT.shape[1] + 1, dtype=cT.dtype, device=cT.device)
    torch.cumsum(cT.gather(1, order), dim=1, out=c_cum[:, 1:])
    return PositionTables(order=order, tau=tau, c_cum=c_cum)


def firing_entries(
    W_rows: Float[Tensor, "r d_model"], E: Float[Tensor, "v d_model"], tau: Float[Tensor, "r n_pos"],
    token_block: int | None = None,
) -> tuple[Int[Tensor, " m"], Int[Tensor, " m"], Float[Tensor, " m"], Int[Tensor, " m"]]:
    """Return (row, column, value, j) of the entries of W_rows @ E.T above their row's lowest threshold tau[:, 0], in
    row order, with j = #{q : tau[row, q] < value} >= 1 the number of positions at which the entry fires.

    On a CPU the product is formed token_block columns at a time (by default CACHE_FLOATS entries), and each block is
    compared while it is still in cache: that costs less than the whole product written to memory and read back.
    """
    r = W_rows.shape[0]
    if token_block is None:  # a GPU forms the product whole: blocks there would only add waits on the device
        token_block = default_token_block(r) if E.device.type == "cpu" else max(E.shape[0], 1)
    t_min = tau[:, :1]
    blocks = []
    for t0 in range(0, E.shape[0], token_block):
        A = W_rows @ E[t0 : t0 + token_block].T
        rows, cols = (A > t_min).nonzero(as_tuple=True)  # in row order within the block
        blocks.append((rows, cols + t0, A[rows, cols]))
    counts = torch.stack([torch.bincount(b[0], minlength=r) for b in blocks])  # (blocks, r)
    total = counts.sum(0)
    if len(blocks) == 1:
        rows, cols, vals = blocks[0]
    else:  # a counting sort: each block's entries of a row go after the earlier blocks' entries of that row
        m = int(total.sum())
        rows = torch.empty(m, dtype=torch.long, device=E.device)
        cols, vals = torch.empty_like(rows), torch.empty(m, dtype=blocks[0][2].dtype, device=E.device)
        start = (total.cumsum(0) - total) + (counts.cumsum(0) - counts)  # (blocks, r): where block b's row goes
        for (br, bc, bv), s_b, c_b in zip(blocks, start, counts):
            dest = s_b[br] + torch.arange(br.numel(), device=E.device) - (c_b.cumsum(0) - c_b)[br]
            rows[dest], cols[dest], vals[dest] = br, bc, bv
    return rows, cols, vals, _segment_searchsorted(tau, rows, vals, total)


def _segment_searchsorted(
    tau: Float[Tensor, "r n_pos"], rows: Int[Tensor, " m"], vals: Float[Tensor, " m"], counts: Int[Tensor, " r"]
) -> Int[Tensor, " m"]:
    """Return #{q : tau[row, q] < val} for row-sorted (row, val) pairs, via one batched searchsorted.

    Each row's values are laid out in segments of L slots (padded with -inf), and every segment gets
    its row's thresholds, so a single 2-D searchsorted serves all rows with at most L-1 padding per row.
    """
    m = vals.numel()
    if m == 0:
        return torch.zeros(0, dtype=torch.long, device=vals.device)
    r = tau.shape[0]
    L = int(min(4096, max(64, 1 << max(0, (m // max(r, 1)).bit_length() - 1))))
    seg_per_row = torch.div(counts + L - 1, L, rounding_mode="floor")
    seg_start = seg_per_row.cumsum(0) - seg_per_row  # first segment of each row
    row_start = counts.cumsum(0) - counts  # first entry of each row in the flat list
    col = torch.arange(m, device=vals.device) - row_start[rows]
    slot = seg_start[rows] * L + col
    n_seg = int(seg_per_row.sum())
    padded = torch.full((n_seg * L,), -math.inf, dtype=vals.dtype, device=vals.device)
    padded[slot] = vals
    seg_row = torch.repeat_interleave(torch.arange(r, device=vals.device), seg_per_row)
    J = torch.searchsorted(tau[seg_row], padded.view(n_seg, L))
    return J.view(-1)[slot]


# ----------------------------------------------------------------------------------------------
# Exact path
# ----------------------------------------------------------------------------------------------


def _feature_chunk_stats(
    rows: Int[Tensor, " m"],
    cols: Int[Tensor, " m"],
    vals: Float[Tensor, " m"],
    j: Int[Tensor, " m"],
    cT: Float[Tensor, "r n_pos"],
    tables: PositionTables,
    w: Float[Tensor, " d_vocab"],
) -> tuple[Float[Tensor, "r n_pos"], Float[Tensor, "r n_pos"], Float[Tensor, "r n_pos"], Float[Tensor, " r"]]:
    """Return (mean, variance and firing rate per feature and position, Var_t of the mean over positions per feature)
    from the firing entries (row, token, token part a, number of positions it fires at) of a chunk of r features."""
    r, n = cT.shape
    a = vals.double()
    wv = w[cols]
    mean, var, S0, cum = _moments(_histograms(rows * n + (n - j), wv, a, r * n).view(3, r, n), cT, tables)
    g = (j * a + tables.c_cum.view(-1)[rows * (n + 1) + j]) / n  # mean over positions per firing token
    f_mean = mean.mean(1)
    tok_sq = torch.zeros(r, dtype=torch.float64, device=vals.device).index_add_(0, rows, wv * (g - f_mean[rows]) ** 2)
    return mean, var, S0, _token_variance(tok_sq, cum, f_mean)


def _dense_chunk_stats(
    A: Float[Tensor, "r d_vocab"], cT: Float[Tensor, "r n_pos"], tables: PositionTables, w: Float[Tensor, " d_vocab"]
) -> tuple[Float[Tensor, "r n_pos"], Float[Tensor, "r n_pos"], Float[Tensor, "r n_pos"], Float[Tensor, " r"]]:
    """Return what _feature_chunk_stats returns, from the whole product A = token parts of r features x every token,
    for a chunk where most (token, feature) pairs fire somewhere: no entry list, each pair's count of firing positions
    j from one 2-D search; pairs that never fire (j = 0) carry weight 0."""
    r, n = cT.shape
    j = torch.searchsorted(tables.tau, A)  # (r, d_vocab): #{q : tau[row, q] < a}
    a = A.double()
    wv = w[None, :] * (j > 0)
    # a pair with j = 0 lands one bin past its row (weight 0), so one spare bin at the end
    bins = torch.arange(r, device=A.device)[:, None] * n + (n - j)
    hist = _histograms(bins.view(-1), wv.view(-1), a.view(-1), r * n + 1)
    mean, var, S0, cum = _moments(hist[:, : r * n].view(3, r, n), cT, tables)
    g = (j * a + tables.c_cum.gather(1, j)) / n
    f_mean = mean.mean(1)
    tok_sq = (wv * (g - f_mean[:, None]) ** 2).sum(1)
    return mean, var, S0, _token_variance(tok_sq, cum, f_mean)


def _histograms(bins: Int[Tensor, " m"], wv: Float[Tensor, " m"], a: Float[Tensor, " m"], size: int) -> Float[Tensor, "3 size"]:
    """Return the histograms of w, w a and w a^2 over `size` bins (float64). The bins are reversed, rows * n_pos +
    (n_pos - j), so that one cumulative sum gives S(q), the sum over entries with j > q, at sorted position
    q = n_pos - 1 - bin."""
    wa = wv * a
    hist = torch.zeros(3, size, dtype=torch.float64, device=a.device)
    hist[0].index_add_(0, bins, wv)
    hist[1].index_add_(0, bins, wa)
    hist[2].index_add_(0, bins, wa * a)
    return hist


def _moments(hist: Float[Tensor, "3 r n_pos"], cT: Float[Tensor, "r n_pos"], tables: PositionTables):
    """Return (mean, variance, firing rate per feature and position, cumulative histograms) from the reversed
    histograms of weight, weight x a and weight x a^2 over each entry's count of firing positions."""
    cum = hist.cumsum(2)
    S0, S1, S2 = torch.empty_like(cum).scatter_(2, tables.order.flip(1)[None].expand(3, -1, -1), cum)
    # the feature is a + c where it fires: E f = S1 + c S0 and Var f = S2 - S1^2 + c (1 - S0) (c S0 + 2 S1), which is
    # exactly S2 - S1^2 where a feature fires on every token (no c^2 to cancel)
    t = cT * S0
    mean = S1 + t
    t += S1
    t += S1
    q = torch.rsub(S0, 1.0).mul_(cT).mul_(t)
    var = S2.sub_(S1 * S1).add_(q).clamp_(min=0.0)
    return mean, var, S0, cum


def _token_variance(tok_sq: Float[Tensor, " r"], cum: Float[Tensor, "3 r n_pos"], f_mean: Float[Tensor, " r"]) -> Float[Tensor, " r"]:
    """Return Var_t of each feature's mean over positions: the firing tokens' squared deviations (tok_sq) plus the
    tokens that never fire, whose mean is 0."""
    tok_w = cum[0, :, -1]  # the weight of the tokens that fire somewhere
    return tok_sq + (1 - tok_w).clamp(min=0.0) * f_mean**2


def _finalize(
    mean: Float[Tensor, "n_pos d_sae"],
    var_within: Float[Tensor, "n_pos d_sae"],
    rate: Float[Tensor, "n_pos d_sae"],
    preact: Float[Tensor, "n_pos d_sae"],
    var_tok: Float[Tensor, " d_sae"],
    positions: Int[Tensor, " n_pos"],
    path: str,
    to_host: bool = True,
) -> Layer0Stats:
    """Return Layer0Stats from per-position means and variances and the per-feature token variance.

    With to_host (the default) every tensor comes back on the CPU; from a GPU the copies are queued together (into
    pinned memory) and waited for once. The copy is the GPU's main cost: on an H200 (benchmarks/bench_layer0_stats.py)
    the exact path took 0.070 s with the statistics left on the device and 0.62 s with 805 MB of them copied into
    newly allocated host memory. Without to_host they stay on the device they were computed on.
    """
    f_mean = mean.mean(0)
    var = ((mean - f_mean) ** 2).mean(0) + var_within.mean(0)
    ok = var > ZERO_VAR_RTOL * (var + f_mean**2)
    safe = torch.where(ok, var, torch.ones_like(var))
    r2_pos = r2_pos_of(mean, var_within)
    r2_tok = torch.where(ok, var_tok / safe, torch.zeros_like(var)).clamp(0.0, 1.0)
    score, arg = mean.max(0)
    fields = dict(positions=positions.to(mean.device), mean=mean, std=var_within.clamp(min=0.0).sqrt(),
                  firing_rate=rate, mean_preact=preact, positional_score=score, r2_pos=r2_pos, r2_tok=r2_tok,
                  feature_mean=f_mean, feature_var=var)
    fields["argmax_position"] = fields["positions"][arg]
    if to_host and mean.device.type != "cpu":
        cuda = mean.device.type == "cuda"
        fields = {k: v.to("cpu", non_blocking=cuda) for k, v in fields.items()}
        if cuda:
            torch.cuda.synchronize(mean.device)
    return Layer0Stats(**fields, path=path)


@torch.no_grad()
def exact_stats(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos_rows: Float[Tensor, "n_pos d_model"],
    sae: SAE,
    w: Float[Tensor, " d_vocab"],
    positions: Int[Tensor, " n_pos"],
    device: torch.device,
    feature_chunk: int | None = None,
    progress: bool | None = None,
    to_host: bool = True,
) -> Layer0Stats:
    """Return exact statistics for a Standard/JumpReLU SAE over all tokens x the given W_pos rows (on the CPU, or
    left on `device` without to_host)."""
    feature_chunk = feature_chunk or default_feature_chunk(device)
    s, W_enc, c, thr = encoder_parts(W_pos_rows, sae, device)
    dt = W_enc.dtype
    E = W_E.to(device, sae.W_enc.dtype).to(dt)
    E = E * s if s != 1.0 else E
    w = w.to(device)
    n, F = c.shape
    mean = torch.empty(n, F, dtype=torch.float64, device=device)
    var_within = torch.empty_like(mean)
    rate = torch.empty_like(mean)
    var_tok = torch.empty(F, dtype=torch.float64, device=device)
    a_bar = (w.to(dt) @ E).double() @ W_enc.double() if dt != torch.float64 else (w @ E) @ W_enc
    preact = a_bar[None, :] + c
    W_encT, cT = W_enc.T.contiguous(), c.T.contiguous()
    starts = range(0, F, feature_chunk)
    for f0 in _progress(starts, len(starts), "layer-0 stats (exact)", progress):
        f1 = min(f0 + feature_chunk, F)
        tables = position_tables(cT[f0:f1], thr[f0:f1], dt)
        A = W_encT[f0:f1] @ E.T if (f1 - f0) * E.shape[0] <= DENSE_MAX_ENTRIES else None
        if A is not None and float((A > tables.tau[:, :1]).float().mean()) >= DENSE_SHARE:
            m, v, r, vt = _dense_chunk_stats(A, cT[f0:f1], tables, w)
        else:
            del A
            m, v, r, vt = _feature_chunk_stats(*firing_entries(W_encT[f0:f1], E, tables.tau), cT[f0:f1], tables, w)
        mean[:, f0:f1] = m.T
        var_within[:, f0:f1] = v.T
        rate[:, f0:f1] = r.T
        var_tok[f0:f1] = vt
    return _finalize(mean, var_within, rate, preact, var_tok, positions, "exact", to_host)


@torch.no_grad()
def exact_token_means(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos_rows: Float[Tensor, "n_pos d_model"],
    sae: SAE,
    device: torch.device,
    token_chunk: int = 2048,
    progress: bool | None = None,
) -> Iterator[tuple[slice, Float[Tensor, "chunk d_sae"]]]:
    """Yield (token slice, exact mean activation over the positions per token and feature) chunk by chunk."""
    s, W_enc, c, thr = encoder_parts(W_pos_rows, sae, device)
    dt = W_enc.dtype
    n, F = c.shape
    tables = position_tables(c.T.contiguous(), thr, dt)
    W_encT = W_enc.T.contiguous()
    V = W_E.shape[0]
    starts = range(0, V, token_chunk)
    for t0 in _progress(starts, len(starts), "layer-0 token means (exact)", progress):
        t1 = min(t0 + token_chunk, V)
        E = W_E[t0:t1].to(device, sae.W_enc.dtype).to(dt)
        E = E * s if s != 1.0 else E
        rows, cols, vals, j = firing_entries(W_encT, E, tables.tau)
        out = torch.zeros((t1 - t0) * F, dtype=torch.float64, device=device)
        out[cols * F + rows] = (j * vals.double() + tables.c_cum.view(-1)[rows * (n + 1) + j]) / n
        yield slice(t0, t1), out.view(t1 - t0, F).to(sae.W_enc.dtype)


# ----------------------------------------------------------------------------------------------
# Brute-force path
# ----------------------------------------------------------------------------------------------


def _sae_on(sae: SAE, device: torch.device) -> SAE:
    """Return the SAE itself if its weights are on device, else a copy moved there."""
    if sae.W_enc.device == device:
        return sae
    return copy.deepcopy(sae).to(device)


@torch.no_grad()
def brute_force_batches(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos_rows: Float[Tensor, "n_pos d_model"],
    sae: SAE,
    device: torch.device,
    batch_size: int = 1024,
    progress: bool | None = None,
) -> Iterator[tuple[slice, slice, Float[Tensor, "tc pc d_sae"], Float[Tensor, "tc pc d_sae"] | None]]:
    """Yield (token slice, position-row slice, activations, pre-activations or None) from sae.encode on x = W_E + W_pos."""
    sae = _sae_on(sae, device)
    V, n = W_E.shape[0], W_pos_rows.shape[0]
    pc = min(n, batch_size)
    tc = max(1, batch_size // pc)
    E = W_E.to(device, sae.W_enc.dtype)
    P = W_pos_rows.to(device, sae.W_enc.dtype)
    captured: list[Tensor] = []
    handle = sae.hook_sae_acts_pre.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        starts = range(0, V, tc)
        for t0 in _progress(starts, len(starts), "layer-0 stats (brute force)", progress):
            t1 = min(t0 + tc, V)
            for p0 in range(0, n, pc):
                p1 = min(p0 + pc, n)
                x = (E[t0:t1, None, :] + P[None, p0:p1, :]).reshape(-1, E.shape[1])
                captured.clear()
                acts = sae.encode(x)
                if acts.is_sparse:
                    acts = acts.to_dense()
                shape = (t1 - t0, p1 - p0, acts.shape[-1])
                pre = captured[-1].reshape(shape) if captured else None
                yield slice(t0, t1), slice(p0, p1), acts.reshape(shape), pre
    finally:
        handle.remove()


@torch.no_grad()
def brute_force_stats(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos_rows: Float[Tensor, "n_pos d_model"],
    sae: SAE,
    w: Float[Tensor, " d_vocab"],
    positions: Int[Tensor, " n_pos"],
    device: torch.device,
    batch_size: int = 1024,
    progress: bool | None = None,
) -> Layer0Stats:
    """Return the statistics by running sae.encode on every (token, position) input, reduced on the fly."""
    n, F = W_pos_rows.shape[0], sae.cfg.d_sae
    w = w.to(device)
    kw = dict(dtype=torch.float64, device=device)
    s1, s2, fire, pre = (torch.zeros(n, F, **kw) for _ in range(4))
    tok_sq = torch.zeros(F, **kw)
    g = torch.zeros(0, F, **kw)
    current = None
    have_pre = True

    def flush() -> None:
        nonlocal tok_sq
        if current is not None:
            tok_sq += w[current] @ (g / n) ** 2

    for ts, ps, acts, pre_acts in brute_force_batches(W_E, W_pos_rows, sae, device, batch_size, progress):
        if ts != current:
            flush()
            current, g = ts, torch.zeros(ts.stop - ts.start, F, **kw)
        f = acts.double()
        wt = w[ts]
        s1[ps] += torch.einsum("t,tpf->pf", wt, f)
        s2[ps] += torch.einsum("t,tpf->pf", wt, f * f)
        fire[ps] += torch.einsum("t,tpf->pf", wt, (f > 0).double())
        if pre_acts is None:
            have_pre = False
        else:
            pre[ps] += torch.einsum("t,tpf->pf", wt, pre_acts.double())
        g += f.sum(1)
    flush()
    f_mean = s1.mean(0)
    var_tok = tok_sq - f_mean**2
    if not have_pre:
        pre.fill_(math.nan)
    return _finalize(s1, (s2 - s1**2).clamp(min=0.0), fire, pre, var_tok, positions, "brute_force")


@torch.no_grad()
def brute_force_token_means(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos_rows: Float[Tensor, "n_pos d_model"],
    sae: SAE,
    device: torch.device,
    batch_size: int = 1024,
    progress: bool | None = None,
) -> Iterator[tuple[slice, Float[Tensor, "chunk d_sae"]]]:
    """Yield (token slice, mean activation over the positions per token and feature) from sae.encode."""
    n = W_pos_rows.shape[0]
    current, g = None, None
    for ts, _ps, acts, _pre in brute_force_batches(W_E, W_pos_rows, sae, device, batch_size, progress):
        if ts != current:
            if current is not None:
                yield current, (g / n).to(acts.dtype)
            current, g = ts, torch.zeros(ts.stop - ts.start, acts.shape[-1], dtype=torch.float64, device=acts.device)
        g += acts.double().sum(1)
    if current is not None:
        yield current, (g / n).to(sae.W_enc.dtype)


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def layer0_stats(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    positions: Sequence[int] | Tensor | range | None = None,
    token_weights: Sequence[float] | Tensor | None = None,
    method: str = "auto",
    device: str | torch.device | None = None,
    feature_chunk: int | None = None,
    batch_size: int = 1024,
    progress: bool | None = None,
) -> Layer0Stats:
    """Return Layer0Stats over all tokens x positions (default all rows of W_pos) of a blocks.0.hook_resid_pre SAE."""
    check_layer0_inputs(W_E, W_pos, sae)
    pos = resolve_positions(positions, W_pos.shape[0])
    w = resolve_token_weights(token_weights, W_E.shape[0])
    path = choose_method(sae, method)
    dev = default_device(device)
    rows = W_pos.detach()[pos.to(W_pos.device)]
    if path == "exact":  # computed once per build for each SAE and set of positions (possae.cache)
        chunk = feature_chunk or default_feature_chunk(dev)
        return cached("layer0_exact", (W_E, rows, sae, input_scale(sae), w, pos, dev.type, chunk),
                      lambda: exact_stats(W_E.detach(), rows, sae, w, pos, dev, chunk, progress=progress))
    return brute_force_stats(W_E.detach(), rows, sae, w, pos, dev, batch_size, progress)


def layer0_stats_from_model(model, sae: SAE, **kwargs) -> Layer0Stats:
    """Return layer0_stats(model.W_E, model.W_pos, sae, **kwargs) for a transformer_lens HookedTransformer."""
    return layer0_stats(model.W_E, model.W_pos, sae, **kwargs)


def token_feature_means(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    positions: Sequence[int] | Tensor | range | None = None,
    method: str = "auto",
    device: str | torch.device | None = None,
    token_chunk: int = 2048,
    batch_size: int = 1024,
    progress: bool | None = None,
) -> Iterator[tuple[slice, Float[Tensor, "chunk d_sae"]]]:
    """Return a generator of (token slice, mean activation over the positions for those tokens x all features)."""
    check_layer0_inputs(W_E, W_pos, sae)
    pos = resolve_positions(positions, W_pos.shape[0])
    path = choose_method(sae, method)
    dev = default_device(device)
    rows = W_pos.detach()[pos.to(W_pos.device)]
    if path == "exact":
        return exact_token_means(W_E.detach(), rows, sae, dev, token_chunk, progress=progress)
    return brute_force_token_means(W_E.detach(), rows, sae, dev, batch_size, progress)


def token_top_features(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    k: int = 10,
    **kwargs,
) -> tuple[Float[Tensor, "d_vocab k"], Int[Tensor, "d_vocab k"]]:
    """Return (values, feature indices) of each token's k features with the largest mean activation over positions."""
    vals, idx = [], []
    for _ts, m in token_feature_means(W_E, W_pos, sae, **kwargs):
        v, i = m.topk(min(k, m.shape[1]), dim=1)
        vals.append(v.cpu())
        idx.append(i.cpu())
    return torch.cat(vals), torch.cat(idx)


def token_feature_mean_matrix(
    W_E: Float[Tensor, "d_vocab d_model"], W_pos: Float[Tensor, "n_ctx d_model"], sae: SAE, **kwargs
) -> Float[Tensor, "d_vocab d_sae"]:
    """Return the whole d_vocab x d_sae matrix of mean activations over positions (large: only when asked)."""
    return torch.cat([m.cpu() for _ts, m in token_feature_means(W_E, W_pos, sae, **kwargs)])

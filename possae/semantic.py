"""Semantic (token) features of layer-0 SAEs: token scores, chosen tokens' top features, invariance over positions.

At ``blocks.0.hook_resid_pre`` an SAE reads ``x(t, p) = W_E[t] + W_pos[p]``, so a feature's activation ``f_i(t, p)``
is a function of a token and a position, and :mod:`possae.layer0_stats` gives, exactly over every token and the
chosen positions, the share of its variance explained by the token, ``R2_tok = Var_t(E_p f) / Var(f)``. A feature is
*semantic* here when ``R2_tok >= threshold`` (default :data:`SEMANTIC_R2`).

This module adds:

* :func:`in_context_positions`: the positions ``first..context_size-1`` at which an SAE trained on BOS-prefixed
  windows of ``context_size`` tokens saw ordinary tokens (position 0 always held BOS);
* :func:`semantic_features`, :func:`semantic_counts`, :func:`sorted_scores_frame`: the token score per feature;
* :func:`single_token_ids`: strings -> token ids, refusing any string that is not exactly one token;
* :func:`chosen_token_means`, :func:`token_top_features_frame`: exact mean activation over the positions of every
  feature on a few tokens, and each token's top-k features;
* :func:`pair_profiles`: the activation of feature ``i_j`` on token ``t_j`` at each position, for many (token,
  feature) pairs, exactly from the split ``h_i(t, p) = a_i(t) + c_i(p)`` of
  :func:`possae.layer0_stats.encoder_parts` (or through ``sae.encode`` for SAEs that split does not cover), and
  :func:`token_activation_vs_position`, the same for one token and a few features as a frame;
* :func:`variation_over_positions`: the coefficient of variation over positions ``std_p f / mean_p f``
  (population std), the measure of position invariance: 0 for a feature whose activation on a token is the same
  at every position;
* :func:`top_tokens_by_mean`: per feature, its k tokens with the largest mean activation over the positions,
  exact over the whole vocabulary, streamed (no ``d_vocab x d_sae`` matrix is held);
* :func:`position_invariance_frame` and :func:`most_invariant_features`: per feature, its top tokens and the
  variation over positions of its activation on them; the semantic features whose activation varies least.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from sae_lens import SAE
from torch import Tensor

from possae.devices import default_device
from possae.layer0_stats import (
    Layer0Stats,
    check_layer0_inputs,
    choose_method,
    encoder_parts,
    resolve_positions,
    token_feature_mean_matrix,
    token_feature_means,
)
from possae.hooks import in_context_positions  # noqa: F401  (re-exported for the chapter until it imports from hooks)
from possae.positional import POSITIONAL_R2

SEMANTIC_R2 = 0.5


# ----------------------------------------------------------------------------------------------
# Positions and token scores
# ----------------------------------------------------------------------------------------------


def _check_threshold(threshold: float) -> None:
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold is a share of variance and must lie in (0, 1]; got {threshold}.")


def semantic_features(stats: Layer0Stats, threshold: float = SEMANTIC_R2) -> Bool[Tensor, " d_sae"]:
    """Return the mask of semantic features: R2_tok >= threshold (over the tokens x positions of `stats`)."""
    _check_threshold(threshold)
    return stats.r2_tok >= threshold


def alive_features(stats: Layer0Stats) -> Bool[Tensor, " d_sae"]:
    """Return the mask of features that fire on some (token, position) input of `stats`."""
    return stats.firing_rate.max(0).values > 0


def semantic_counts(stats: Layer0Stats, threshold: float = SEMANTIC_R2,
                    positional_threshold: float = POSITIONAL_R2) -> dict[str, float]:
    """Return counts and shares: features, alive, semantic (R2_tok >= threshold), positional, neither, median R2_tok."""
    sem = semantic_features(stats, threshold)
    _check_threshold(positional_threshold)
    pos = stats.r2_pos >= positional_threshold
    alive = alive_features(stats)
    n = int(sem.numel())
    n_alive = int(alive.sum())
    n_sem = int(sem.sum())
    return {
        "n_features": n,
        "n_alive": n_alive,
        "n_semantic": n_sem,
        "semantic_share": n_sem / n,
        "semantic_share_alive": n_sem / n_alive if n_alive else math.nan,
        "n_positional": int(pos.sum()),
        "n_both": int((sem & pos).sum()),
        "n_neither_alive": int((alive & ~sem & ~pos).sum()),
        "median_r2_tok_alive": float(stats.r2_tok[alive].median()) if n_alive else math.nan,
    }


def sorted_scores_frame(stats: Layer0Stats) -> pd.DataFrame:
    """Return one row per rank: R2_tok and R2_pos, each sorted in decreasing order over the features."""
    return pd.DataFrame({
        "r2_tok": stats.r2_tok.sort(descending=True).values.numpy(),
        "r2_pos": stats.r2_pos.sort(descending=True).values.numpy(),
    }, index=pd.RangeIndex(1, stats.d_sae + 1, name="rank"))


def scores_frame(stats: Layer0Stats, threshold: float = SEMANTIC_R2) -> pd.DataFrame:
    """Return one row per feature: r2_tok, r2_pos, firing rate, alive, semantic (R2_tok >= threshold)."""
    return pd.DataFrame({
        "r2_tok": stats.r2_tok.numpy(),
        "r2_pos": stats.r2_pos.numpy(),
        "firing_rate": stats.firing_rate.mean(0).numpy(),
        "alive": alive_features(stats).numpy(),
        "semantic": semantic_features(stats, threshold).numpy(),
    }, index=pd.RangeIndex(stats.d_sae, name="feature"))


# ----------------------------------------------------------------------------------------------
# Tokens of interest
# ----------------------------------------------------------------------------------------------


def _encode(tokenizer, text: str) -> list[int]:
    """Return the ids of `text` without special tokens (Hugging Face tokenizers, or `tokenizers.Tokenizer`)."""
    if callable(tokenizer) and hasattr(tokenizer, "convert_ids_to_tokens"):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    enc = tokenizer.encode(text, add_special_tokens=False)
    return list(getattr(enc, "ids", enc))


def single_token_ids(tokenizer, strings: Sequence[str], d_vocab: int | None = None) -> list[int]:
    """Return the token id of each string; raise ValueError naming any string that is not exactly one token."""
    if tokenizer is None:
        raise ValueError("The model has no tokenizer, so token strings cannot be looked up: load the model with one.")
    if isinstance(strings, str):
        raise ValueError(f"Pass a list of token strings, e.g. [{strings!r}], not a single string {strings!r}.")
    if len(strings) == 0:
        raise ValueError("No token strings given: pass at least one, e.g. [' the', '.'].")
    ids = []
    for s in strings:
        if not isinstance(s, str) or s == "":
            raise ValueError(f"Token strings must be non-empty strings; got {s!r}.")
        enc = _encode(tokenizer, s)
        if len(enc) != 1:
            pieces = [tokenizer.decode([i]) for i in enc]
            hint = ""
            if not s.startswith(" ") and len(_encode(tokenizer, " " + s)) == 1:
                hint = f" Note that {' ' + s!r}, with a leading space, is a single token."
            raise ValueError(
                f"Token string {s!r} is not a single token for this tokenizer: it encodes to {len(enc)} tokens "
                f"{pieces}. Pass strings that are exactly one token each (e.g. one of those pieces, or a common "
                f"word with its leading space such as ' the').{hint}"
            )
        if d_vocab is not None and not 0 <= enc[0] < d_vocab:
            raise ValueError(f"Token string {s!r} has id {enc[0]}, outside the model's vocabulary of {d_vocab}: "
                             "the tokenizer does not belong to this model.")
        ids.append(int(enc[0]))
    return ids


def _as_long(ids) -> Int[Tensor, " n"]:
    """Return ids (a tensor, list or numpy array) as a flat long CPU tensor."""
    if isinstance(ids, Tensor):
        return ids.detach().long().flatten().cpu()
    return torch.tensor(np.asarray(ids, dtype=np.int64)).flatten()


def _token_index(tokens: Sequence[int] | Tensor, d_vocab: int) -> Int[Tensor, " n"]:
    """Return the token ids as a long tensor after checking they lie in 0..d_vocab-1."""
    idx = _as_long(tokens)
    if idx.numel() == 0:
        raise ValueError("no tokens given.")
    if int(idx.min()) < 0 or int(idx.max()) >= d_vocab:
        raise ValueError(f"token ids must lie in 0..{d_vocab - 1}; got {int(idx.min())}..{int(idx.max())}.")
    return idx


@torch.no_grad()
def chosen_token_means(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    tokens: Sequence[int] | Tensor,
    positions: Sequence[int] | Tensor | range | None = None,
    method: str = "auto",
    device: str | torch.device | None = None,
) -> Float[Tensor, "n_tokens d_sae"]:
    """Return the mean activation over the positions of every feature on each of the given tokens."""
    idx = _token_index(tokens, W_E.shape[0])
    return token_feature_mean_matrix(W_E.detach()[idx.to(W_E.device)], W_pos, sae, positions=positions,
                                     method=method, device=device, progress=False)


def token_top_features_frame(means: Float[Tensor, "n_tokens d_sae"], tokens: Sequence[int] | Tensor,
                             k: int) -> pd.DataFrame:
    """Return one row per (token, rank): each token's k features with the largest mean activation, and that mean."""
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}.")
    tok = _as_long(tokens)
    if means.shape[0] != tok.numel():
        raise ValueError(f"means has {means.shape[0]} rows but {tok.numel()} tokens were given.")
    v, i = means.double().topk(min(k, means.shape[1]), dim=1)
    kk = v.shape[1]
    return pd.DataFrame({
        "token": tok.repeat_interleave(kk).numpy(),
        "rank": torch.arange(1, kk + 1).repeat(tok.numel()).numpy(),
        "feature": i.flatten().cpu().numpy(),
        "mean_activation": v.flatten().cpu().numpy(),
    })


# ----------------------------------------------------------------------------------------------
# Activation of (token, feature) pairs over positions
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def pair_profiles(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    tokens: Sequence[int] | Tensor,
    features: Sequence[int] | Tensor,
    positions: Sequence[int] | Tensor | range | None = None,
    method: str = "auto",
    device: str | torch.device | None = None,
    pair_chunk: int = 16384,
    batch_size: int = 4096,
) -> Float[Tensor, "n_pos m"]:
    """Return float64 activations of feature features[j] on token tokens[j] at each position (rows: positions).

    Exact path: ``(a + c) * 1[a + c > thr]`` with ``a = s W_E[t] . W_enc[:, i]`` in float64 and the position part
    and threshold from :func:`possae.layer0_stats.encoder_parts`. Brute force: ``sae.encode(W_E[t] + W_pos[p])``
    once per distinct token, all positions at a time.
    """
    check_layer0_inputs(W_E, W_pos, sae)
    tok = _token_index(tokens, W_E.shape[0])
    feat = _as_long(features)
    if feat.numel() != tok.numel():
        raise ValueError(f"tokens and features must pair up; got {tok.numel()} tokens and {feat.numel()} features.")
    if int(feat.min()) < 0 or int(feat.max()) >= sae.cfg.d_sae:
        raise ValueError(f"feature ids must lie in 0..{sae.cfg.d_sae - 1}; got {int(feat.min())}..{int(feat.max())}.")
    pos = resolve_positions(positions, W_pos.shape[0])
    rows = W_pos.detach()[pos.to(W_pos.device)]
    path = choose_method(sae, method)
    dev = default_device(device)
    out = torch.empty(len(pos), tok.numel(), dtype=torch.float64)
    if path == "exact":
        s, W_enc, c, thr = encoder_parts(rows, sae, dev)
        for j0 in range(0, tok.numel(), pair_chunk):
            t = tok[j0 : j0 + pair_chunk].to(dev)
            f = feat[j0 : j0 + pair_chunk].to(dev)
            E = W_E.detach()[t.to(W_E.device)].to(dev, torch.float64) * s
            a = (E * W_enc.T[f].double()).sum(1)
            h = a[None, :] + c[:, f]
            out[:, j0 : j0 + len(t)] = torch.where(h > thr[f], h, torch.zeros_like(h)).cpu()
        return out
    enc_dev, dt = sae.W_enc.device, sae.W_enc.dtype
    P = rows.to(enc_dev, dt)
    per = max(1, batch_size // len(pos))
    uniq, inverse = tok.unique(return_inverse=True)
    for u0 in range(0, len(uniq), per):
        u = uniq[u0 : u0 + per]
        x = W_E.detach()[u.to(W_E.device)].to(enc_dev, dt)[:, None, :] + P[None]
        acts = sae.encode(x.reshape(-1, x.shape[-1]))
        acts = (acts.to_dense() if acts.is_sparse else acts).reshape(len(u), len(pos), -1)
        cols = ((inverse >= u0) & (inverse < u0 + len(u))).nonzero().squeeze(1)
        out[:, cols] = acts[(inverse[cols] - u0).to(enc_dev), :, feat[cols].to(enc_dev)].T.double().cpu()
    return out


def token_activation_vs_position(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    token: int,
    features: Sequence[int] | Tensor,
    positions: Sequence[int] | Tensor | range | None = None,
    method: str = "auto",
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """Return one row per (feature, position): the feature's activation on `token` there (default: every row of W_pos)."""
    feat = _as_long(features)
    pos = resolve_positions(positions, W_pos.shape[0])
    prof = pair_profiles(W_E, W_pos, sae, torch.full_like(feat, int(token)), feat, pos, method, device)
    return pd.DataFrame({
        "token": int(token),
        "feature": feat.repeat_interleave(len(pos)).numpy(),
        "position": pos.repeat(feat.numel()).numpy(),
        "activation": prof.T.flatten().numpy(),
    })


def variation_over_positions(profiles: Float[Tensor, "n_pos m"]) -> Float[Tensor, " m"]:
    """Return each column's coefficient of variation std / |mean| over the rows (population std); NaN where the mean is 0."""
    p = profiles.double()
    mean = p.mean(0)
    std = p.std(0, correction=0)
    nonzero = mean.abs() > 0
    return torch.where(nonzero, std / torch.where(nonzero, mean.abs(), torch.ones_like(mean)),
                       torch.full_like(mean, math.nan))


# ----------------------------------------------------------------------------------------------
# Top tokens per feature and position invariance
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def top_tokens_by_mean(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    k: int = 5,
    positions: Sequence[int] | Tensor | range | None = None,
    method: str = "auto",
    device: str | torch.device | None = None,
    token_chunk: int = 2048,
    progress: bool | None = None,
) -> tuple[Float[Tensor, "d_sae k"], Int[Tensor, "d_sae k"]]:
    """Return (values, token ids) of each feature's k tokens with the largest mean activation over the positions."""
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}.")
    best_v: Tensor | None = None
    best_i: Tensor | None = None
    for ts, m in token_feature_means(W_E, W_pos, sae, positions=positions, method=method, device=device,
                                     token_chunk=token_chunk, progress=progress):
        v, i = m.double().topk(min(k, m.shape[0]), dim=0)  # (kk, d_sae)
        i = i + ts.start
        if best_v is None:
            best_v, best_i = v, i
        else:
            v, j = torch.cat([best_v, v]).topk(min(k, best_v.shape[0] + v.shape[0]), dim=0)
            best_i = torch.cat([best_i, i]).gather(0, j)
            best_v = v
    return best_v.T.cpu(), best_i.T.cpu()


@torch.no_grad()
def position_invariance_frame(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
    sae: SAE,
    stats: Layer0Stats,
    n_top_tokens: int = 5,
    method: str = "auto",
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Return one row per feature: R2s, top tokens by mean activation over stats.positions, and their variation there.

    Columns: ``r2_tok``, ``r2_pos``, ``firing_rate`` (over all tokens and the positions), ``top_token``,
    ``top_mean`` (its mean activation), ``cv`` (coefficient of variation over the positions of the activation on
    the top token: the position-invariance measure), ``cv_top_n`` (mean cv over the top tokens with a positive mean),
    ``fires_everywhere`` (the feature fires on its top token at every position) and ``top_tokens`` (list of ids).
    """
    pos = stats.positions
    vals, toks = top_tokens_by_mean(W_E, W_pos, sae, n_top_tokens, positions=pos, method=method, device=device,
                                    progress=progress)
    F, n = toks.shape
    if F != stats.d_sae:
        raise ValueError(f"stats has {stats.d_sae} features but the SAE has {F}: pass the SAE's own statistics.")
    prof = pair_profiles(W_E, W_pos, sae, toks.flatten(), torch.arange(F).repeat_interleave(n), pos, method, device)
    cv = variation_over_positions(prof).view(F, n)
    cv = torch.where(vals > 0, cv, torch.full_like(cv, math.nan))
    counted = cv.isfinite()
    cv_top_n = torch.where(counted, cv, torch.zeros_like(cv)).sum(1) / counted.sum(1).clamp(min=1)
    cv_top_n = torch.where(counted.any(1), cv_top_n, torch.full_like(cv_top_n, math.nan))
    everywhere = (prof.view(len(pos), F, n)[:, :, 0] > 0).all(0)
    return pd.DataFrame({
        "r2_tok": stats.r2_tok.numpy(),
        "r2_pos": stats.r2_pos.numpy(),
        "firing_rate": stats.firing_rate.mean(0).numpy(),
        "top_token": toks[:, 0].numpy(),
        "top_mean": vals[:, 0].numpy(),
        "cv": cv[:, 0].numpy(),
        "cv_top_n": cv_top_n.numpy(),
        "fires_everywhere": everywhere.numpy(),
        "top_tokens": [list(map(int, r)) for r in toks.tolist()],
    }, index=pd.RangeIndex(F, name="feature"))


def most_invariant_features(frame: pd.DataFrame, threshold: float = SEMANTIC_R2, n: int = 10) -> pd.DataFrame:
    """Return the n semantic features (R2_tok >= threshold) that fire on their top token, by increasing cv."""
    _check_threshold(threshold)
    keep = frame[(frame.r2_tok >= threshold) & (frame.top_mean > 0) & frame.cv.notna()]
    return keep.sort_values(["cv", "r2_tok"], ascending=[True, False]).head(n)

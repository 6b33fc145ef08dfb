"""Semantic (token) features of layer-0 SAEs: token scores, chosen tokens' top features, invariance over positions.

At ``blocks.0.hook_resid_pre`` an SAE reads ``x(t, p) = W_E[t] + W_pos[p]``, so a feature's activation ``f_i(t, p)``
is a function of a token and a position, and :mod:`possae.layer0_stats` gives, exactly over every token and the
chosen positions, the share of its variance explained by the token, ``R2_tok = Var_t(E_p f) / Var(f)``. A feature is
*semantic* here when ``R2_tok >= threshold`` (default :data:`SEMANTIC_R2`); it is *positional* as
:func:`possae.positional.positional_features` says, over the same positions.

The chapter calls :func:`analyze`, which returns a :class:`SemanticResult` holding every number the prose cites
(:meth:`SemanticResult.glued`), every table (formatted for display) and every frame a figure draws. The pieces:

* :func:`semantic_features`, :func:`semantic_counts`, :func:`sorted_scores_frame`, :func:`scores_frame`: the token
  score per feature, over the positions :func:`possae.hooks.in_context_positions` (the one definition);
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
  variation over positions of its activation on them; the semantic features whose activation varies least;
* the ``*_table`` functions format frames for display and the ``*_sentence`` functions word the prose's
  number-dependent sentences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    layer0_stats,
    resolve_positions,
    token_feature_mean_matrix,
    token_feature_means,
)
from possae.hooks import in_context_positions, require_layer0, sae_context_size
from possae.neuronpedia import NO_PAGES, FeaturePages
from possae.params import Layer0Params, ParameterError
from possae.positional import POSITIONAL_R2, positional_features
from possae.tokenizer import decode_tokens, special_token_ids

SEMANTIC_R2 = 0.5
N_TOP_TOKENS = 5  # tokens per feature whose cv the invariance table averages
N_INVARIANT = 12  # rows of the most-invariant table
N_INVARIANT_PROFILES = 6  # of which the figure draws this many
LOW_CV = 0.05  # the invariance summary counts the semantic features whose cv is below this


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
    """Return counts and shares over the stats' positions: features, live, semantic, positional, both, neither, medians.

    Positional features are :func:`possae.positional.positional_features` over the same positions (R2_pos >=
    positional_threshold and firing), so this count is the positional chapter's. The medians (R2_tok and the
    interaction share ``1 - R2_tok - R2_pos`` over live features) are NaN when no feature is live.
    """
    sem = semantic_features(stats, threshold)
    pos = positional_features(stats, None, positional_threshold)
    alive = alive_features(stats)
    n, n_alive, n_sem = int(sem.numel()), int(alive.sum()), int(sem.sum())
    interaction = interaction_share(stats)[alive]
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
        "median_interaction_alive": float(interaction.median()) if n_alive else math.nan,
    }


INTERACTION_SHARE = 0.2  # a feature is position-modulated when the token x position interaction holds this share of
# its variance or more: neither a function of the token alone nor of the position alone
N_FREQUENT = 5  # the most frequent tokens of the held-out text whose top features the page names


def interaction_share(stats: Layer0Stats) -> Float[Tensor, " d_sae"]:
    """Return each feature's share of variance in the token x position interaction, 1 - R2_tok - R2_pos (>= 0)."""
    return (1.0 - stats.r2_tok - stats.r2_pos).clamp(min=0.0)


@torch.no_grad()
def text_carry(W_E: Float[Tensor, "d_vocab d_model"], W_pos: Float[Tensor, "n_ctx d_model"], sae: SAE,
               tokens: Int[Tensor, "n_windows C"], features: Bool[Tensor, " d_sae"], positions: range,
               ignore: Sequence[int] = (), n_frequent: int = N_FREQUENT, batch_windows: int = 16) -> dict[str, object]:
    """Return, over held-out text at `positions` (tokens in `ignore` left out): the number of inputs, the share of all
    firings ((input, feature) pairs with a positive activation) and of all activation mass carried by `features`, and
    the n_frequent most frequent tokens with each one's top feature on text (largest mean activation) and count.

    A layer-0 SAE reads W_E[t] + W_pos[p] exactly, so no forward pass is needed."""
    dev, dt = sae.W_enc.device, sae.W_enc.dtype
    cols = torch.arange(positions.start, positions.stop)
    toks = tokens[:, cols]
    keep = ~torch.isin(toks, torch.tensor(list(ignore), dtype=toks.dtype))
    counts = torch.bincount(toks[keep], minlength=W_E.shape[0])
    frequent = torch.sort(counts, descending=True, stable=True).indices[:n_frequent]  # ties: the lower id first
    feats = features.to(dev)
    fired = torch.zeros(2, dtype=torch.float64)  # all, carried
    mass = torch.zeros(2, dtype=torch.float64)
    per_token = torch.zeros(len(frequent), sae.cfg.d_sae, dtype=torch.float64)
    Wp = W_pos.detach()[cols].to(dev, dt)
    for i in range(0, len(toks), batch_windows):
        t, k = toks[i : i + batch_windows], keep[i : i + batch_windows]
        x = (W_E.detach()[t.to(W_E.device)].to(dev, dt) + Wp)[k.to(dev)]
        f = sae.encode(x)
        on = f > 0
        fired += torch.tensor([float(on.sum()), float(on[:, feats].sum())], dtype=torch.float64)
        mass += torch.tensor([float(f.sum()), float(f[:, feats].sum())], dtype=torch.float64)
        tk = t[k]
        for j, tok in enumerate(frequent):
            rows = (tk == tok).to(dev)
            if bool(rows.any()):
                per_token[j] += f[rows].sum(0).double().cpu()
    top = per_token.argmax(1)
    return {"inputs": int(keep.sum()), "firing_share": float(fired[1] / fired[0]) if fired[0] else 0.0,
            "mass_share": float(mass[1] / mass[0]) if mass[0] else 0.0,
            "frequent": pd.DataFrame({"token": frequent.numpy(), "count": counts[frequent].numpy(),
                                      "top_feature": top.numpy(),
                                      "top_mean": (per_token.max(1).values / counts[frequent].double()).numpy()})}


def entangled_sentence(carry: dict[str, object], share: Float[Tensor, " d_sae"], n_entangled: int, d_sae: int,
                       labels: Sequence[str], threshold: float = INTERACTION_SHARE) -> str:
    """Return the sentence on the position-modulated features: how many, the share of text firings and activation
    mass they carry, and which of the most frequent tokens' top features are among them."""
    freq = carry["frequent"]
    named = [f"{lab} (feature {int(f)}, interaction {float(share[int(f)]):.0%})" for lab, f in zip(labels, freq["top_feature"])]
    modulated = [n for n, f in zip(named, freq["top_feature"]) if float(share[int(f)]) >= threshold]
    plain = [n for n, f in zip(named, freq["top_feature"]) if float(share[int(f)]) < threshold]
    text = (f"{n_entangled:,} of the {d_sae:,} features ({n_entangled / d_sae:.1%}) hold at least {threshold:.0%} of their "
            f"variance in the interaction of token and position: they are neither semantic nor positional but "
            f"position-modulated. On {carry['inputs']:,} held-out text inputs they carry {carry['firing_share']:.1%} of "
            f"all firings and {carry['mass_share']:.1%} of the activation mass.")
    if modulated:
        text += (f" Of the {len(named)} most frequent tokens of the text, the top feature is position-modulated for "
                 + ", ".join(modulated) + ("; it is not for " + ", ".join(plain) + "." if plain else "."))
    else:
        text += f" None of the {len(named)} most frequent tokens' top features is position-modulated."
    return text


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


# ----------------------------------------------------------------------------------------------
# The chapter: parameters, analysis, tables and sentences
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemanticParams(Layer0Params):
    """The semantic-features chapter's parameters (its parameters cell, name for name)."""

    tokens_of_interest: tuple[str, ...] = (" the", " and", " said", ".")
    top_k: int = 5
    threshold: float = SEMANTIC_R2
    n_heldout_tokens: int = 16384  # held-out text tokens per corpus, for the share of firings each kind carries

    def validate(self) -> None:
        """Raise ParameterError on a threshold outside (0, 1], top_k < 1 or no token of interest."""
        if not 0.0 < self.threshold <= 1.0:
            raise ParameterError(f"threshold is a share of variance and must lie in (0, 1]; got {self.threshold}.")
        if self.top_k < 1:
            raise ParameterError(f"top_k must be >= 1; got {self.top_k}.")
        if not self.tokens_of_interest:
            raise ParameterError("tokens_of_interest is empty: pass at least one token string, e.g. [' the'].")
        if self.n_heldout_tokens < 1:
            raise ParameterError(f"n_heldout_tokens must be >= 1; got {self.n_heldout_tokens}.")


def _pct(x: float, digits: int = 1) -> str:
    """Return a share as a percentage string, e.g. 0.9656 -> '96.6%'."""
    return f"{x:.{digits}%}"


def _num(x: float, digits: int = 3) -> str:
    """Return a number with fixed decimals, or '—' when it is NaN."""
    return "—" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"


def _others(n: int) -> str:
    """Return 'the 1 other' or 'the n others'."""
    return f"the {n} other" + ("" if n == 1 else "s")


def _range_label(positions: range) -> str:
    """Return 'a..b' for a range of positions."""
    return f"{positions.start}..{positions.stop - 1}"


def position_ranges(context_size: int, n_ctx: int) -> dict[str, range]:
    """Return {label: positions}: inside the context (the chapter's), with the BOS slot, and up to n_ctx."""
    inside = in_context_positions(context_size, n_ctx)
    ranges = {f"{_range_label(inside)} (in context)": inside,
              f"0..{context_size - 1} (with the BOS slot)": range(0, context_size)}
    if context_size < n_ctx:
        ranges[f"0..{n_ctx - 1} (every position)"] = range(0, n_ctx)
    return ranges


def kinds_table(counts: dict[str, float], threshold: float,
                positional_threshold: float = POSITIONAL_R2) -> pd.DataFrame:
    """Return the counts of features by kind (all, live, semantic, positional, live and neither) and their shares."""
    kinds = {"all features": counts["n_features"], "live (fire on some input)": counts["n_alive"],
             f"semantic (R²_tok ≥ {threshold:g})": counts["n_semantic"],
             f"positional (R²_pos ≥ {positional_threshold:g})": counts["n_positional"],
             "live, neither": counts["n_neither_alive"]}
    return pd.DataFrame({"features": [int(v) for v in kinds.values()],
                         "share of all": [_pct(v / counts["n_features"]) for v in kinds.values()]},
                        index=pd.Index(list(kinds), name="kind"))


def ranges_table(by_range: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Return one row per range of positions: semantic count and share, positional count, median R2_tok of live ones."""
    return pd.DataFrame({
        "semantic": [int(c["n_semantic"]) for c in by_range.values()],
        "share semantic": [_pct(c["semantic_share"]) for c in by_range.values()],
        "positional": [int(c["n_positional"]) for c in by_range.values()],
        "median R²_tok (live)": [_num(c["median_r2_tok_alive"]) for c in by_range.values()],
    }, index=pd.Index(list(by_range), name="positions"))


def top_features_table(top: pd.DataFrame, pages: FeaturePages | None = None) -> pd.DataFrame:
    """Return the tokens' top features for display: indexed by (token, rank), '—' where a cv is undefined, feature ids
    linked to their Neuronpedia pages when `pages` has them."""
    pages = pages or NO_PAGES
    return pd.DataFrame({
        "feature": [pages.link(f) if pages.hosted else int(f) for f in top["feature"]],
        "mean activation": [_num(v) for v in top["mean_activation"]],
        "R²_tok": [_num(v) for v in top["r2_tok"]],
        "R²_pos": [_num(v, 4) for v in top["r2_pos"]],
        "cv over positions": [_num(v) for v in top["cv"]],
    }, index=pd.MultiIndex.from_arrays([top["label"].values, top["rank"].astype(int).values], names=["token", "rank"]))


def invariant_table(best: pd.DataFrame, pages: FeaturePages | None = None) -> pd.DataFrame:
    """Return the most position-invariant features for display, indexed by feature (top tokens decoded in 'labels';
    ids linked to their Neuronpedia pages when `pages` has them)."""
    pages = pages or NO_PAGES
    return pd.DataFrame({
        "top tokens": [", ".join(t) for t in best["top_labels"]],
        "R²_tok": [_num(v, 4) for v in best["r2_tok"]],
        "R²_pos": [_num(v, 5) for v in best["r2_pos"]],
        "mean on top token": [_num(v) for v in best["top_mean"]],
        "cv (top token)": [_num(v, 4) for v in best["cv"]],
        f"mean cv (top {N_TOP_TOKENS})": [_num(v, 4) for v in best["cv_top_n"]],
    }, index=pd.Index([pages.link(f) for f in best.index] if pages.hosted else best.index.astype(int), name="feature"))


def counts_sentence(counts: dict[str, float]) -> str:
    """Return the sentence on live, positional and neither features (no live feature: says so)."""
    if not counts["n_alive"]:
        return "None of the features fires on any input, so none is semantic or positional."
    return (f"{counts['n_alive']} of them fire on some input, so the semantic ones are "
            f"{_pct(counts['semantic_share_alive'])} of the live features; {counts['n_positional']} are positional "
            f"and {counts['n_neither_alive']} live features are neither.")


def typical_sentence(counts: dict[str, float], threshold: float) -> str:
    """Return the sentence giving the median token and interaction shares of a live feature, and what that makes it."""
    if not counts["n_alive"]:
        return "With no live feature there is no typical one."
    med = counts["median_r2_tok_alive"]
    verdict = ("a typical live feature of this SAE is a function of the token" if med >= threshold else
               f"a typical live feature of this SAE is not semantic (its token score is below {threshold:g})")
    return (f"The median token score of a live feature is {med:.3f}, and the median share of its variance left to "
            f"the interaction of token and position is {counts['median_interaction_alive']:.3f}: on the positions "
            f"inside its context, {verdict}.")


def both_sentence(counts: dict[str, float], threshold: float = SEMANTIC_R2, positional_threshold: float = POSITIONAL_R2) -> str:
    """Return the sentence saying how many features are both semantic and positional, and when that count can only be
    zero (thresholds summing to 1 or more, since R2_tok + R2_pos <= 1)."""
    if counts["n_both"]:
        return f"{counts['n_both']} features are both semantic and positional."
    if threshold + positional_threshold >= 1:
        return ("No feature is both semantic and positional, and with these thresholds none could be: "
                "R²_tok + R²_pos ≤ 1. What mixes the two is the interaction (below).")
    return "No feature is both semantic and positional."


def range_sentence(by_range: dict[str, dict[str, float]], context_size: int, n_ctx: int) -> str:
    """Return the sentence comparing the widest range of positions with the context's own."""
    (inside, c0), (widest, c1) = next(iter(by_range.items())), list(by_range.items())[-1]
    head = (f"Over positions {widest.split(' ')[0]}, {c1['n_semantic']} features ({_pct(c1['semantic_share'])}) are "
            f"semantic and {c1['n_positional']} positional, against {c0['n_semantic']} and {c0['n_positional']} over "
            f"the positions {inside.split(' ')[0]} inside the context.")
    if context_size >= n_ctx:
        return head + f" The SAE was trained on all {n_ctx} positions, so no range reaches past its context."
    if c1["n_semantic"] < c0["n_semantic"]:
        return head + (" So features that are token features on the positions the SAE was trained on stop being so "
                       "past them, where their position part c_i(p) takes values it never took in training.")
    return head + " Reaching past the context does not lower the count of semantic features."


def pairs_summary(top: pd.DataFrame) -> dict[str, float | int]:
    """Return the share of semantic pairs, the median cv of semantic and other pairs (NaN when empty), counts."""
    sem, defined = top["semantic"].astype(bool), top["cv"].notna()
    return {"n_pairs": len(top), "semantic_share": float(sem.mean()), "n_semantic": int(sem.sum()),
            "n_other": int((~sem).sum()), "n_undefined": int((~defined).sum()),
            "cv_sem": float(top["cv"][sem & defined].median()), "cv_other": float(top["cv"][~sem & defined].median())}


def _cv_comparison(a: float, b: float, a_name: str, b_name: str) -> str:
    """Return which of two median cvs (both finite) is the larger, in words."""
    if a < b:
        return f"the {b_name} vary more over positions than the {a_name}"
    if a > b:
        return f"the {a_name} vary more over positions than the {b_name}"
    return f"the {a_name} and the {b_name} vary as much over positions"


def pairs_sentence(top: pd.DataFrame) -> str:
    """Return the sentences on the (token, feature) pairs: share semantic, and their cv against the others'."""
    s = pairs_summary(top)
    out = f"Of these {s['n_pairs']} (token, feature) pairs, {_pct(s['semantic_share'], 0)} involve a semantic feature."
    sem_ok, other_ok = math.isfinite(s["cv_sem"]), math.isfinite(s["cv_other"])
    if sem_ok and other_ok:
        out += (f" The median cv of the activation over positions is {s['cv_sem']:.3f} for the {s['n_semantic']} "
                f"semantic ones, against {s['cv_other']:.3f} for {_others(s['n_other'])}: "
                f"{_cv_comparison(s['cv_sem'], s['cv_other'], 'semantic ones', 'others')}.")
    elif sem_ok:
        out += f" The median cv of their activation over positions is {s['cv_sem']:.3f}."
    elif other_ok:
        out = (f"Of these {s['n_pairs']} (token, feature) pairs, none involves a semantic feature; the median cv of "
               f"their activation over positions is {s['cv_other']:.3f}.")
    if s["n_undefined"]:
        out += (f" {s['n_undefined']} of the pairs have a mean activation of 0 (the feature does not fire on the "
                "token at these positions), so no cv.")
    return out


def pairs_summary_sentence(top: pd.DataFrame, top_k: int) -> str:
    """Return the summary bullet on the tokens of interest's top features."""
    s = pairs_summary(top)
    out = f"The top {top_k} features of the tokens of interest are semantic in {_pct(s['semantic_share'], 0)} of cases"
    if math.isfinite(s["cv_sem"]):
        out += f", with a median variation over positions (cv) of {s['cv_sem']:.3f} for the semantic ones"
        if math.isfinite(s["cv_other"]):
            out += f" and {s['cv_other']:.3f} for the others"
    return out + "."


def invariance_summary(frame: pd.DataFrame, threshold: float) -> dict[str, float | int]:
    """Return, over features firing on their top token: median cv of semantic and other ones, shares, counts."""
    fires = frame[(frame["top_mean"] > 0) & frame["cv"].notna()]
    sem = fires["r2_tok"] >= threshold
    return {"n_semantic": int(sem.sum()), "n_other": int((~sem).sum()),
            "cv_sem": float(fires["cv"][sem].median()), "cv_other": float(fires["cv"][~sem].median()),
            "share_low_cv": float((fires["cv"][sem] < LOW_CV).mean()),
            "share_everywhere": float(fires["fires_everywhere"][sem].mean())}


def invariance_sentence(frame: pd.DataFrame, best: pd.DataFrame, threshold: float) -> str:
    """Return the sentences on the most invariant feature and the cv of semantic features against the others'."""
    s = invariance_summary(frame, threshold)
    if not len(best):
        out = "No semantic feature fires on its top token, so none is ranked."
    else:
        b = best.iloc[0]
        out = (f"The most position-invariant feature, {int(best.index[0])}, fires on its top token "
               f"{b['top_labels'][0]} "
               f"with a mean activation of {b['top_mean']:.3f} and a cv of {b['cv']:.4f} over the positions.")
    if s["n_semantic"]:
        out += (f" Over the {s['n_semantic']} semantic features that fire on their top token the median cv is "
                f"{s['cv_sem']:.3f} ({_pct(s['share_low_cv'], 0)} are below {LOW_CV:g}, and "
                f"{_pct(s['share_everywhere'], 0)} fire on their top token at every position)")
        if s["n_other"]:
            out += (f", against {s['cv_other']:.3f} for {_others(s['n_other'])} that fire on theirs: "
                    f"{_cv_comparison(s['cv_sem'], s['cv_other'], 'semantic features', 'others')}")
        out += "."
    elif s["n_other"]:
        out += f" The median cv of {_others(s['n_other'])}, which fire on their top token, is {s['cv_other']:.3f}."
    return out


def invariance_summary_sentence(frame: pd.DataFrame, best: pd.DataFrame, threshold: float) -> str:
    """Return the summary bullet on position invariance."""
    s = invariance_summary(frame, threshold)
    if not s["n_semantic"]:
        return "No semantic feature fires on its top token, so none has a variation over positions to report."
    out = (f"On its top token, a semantic feature's activation varies by a median cv of {s['cv_sem']:.3f} over "
           "the positions")
    if s["n_other"]:
        out += f" (other features: {s['cv_other']:.3f})"
    return out + f"; the most invariant, feature {int(best.index[0])}, by {best['cv'].iloc[0]:.4f}."


@dataclass(frozen=True)
class SemanticResult:
    """Everything the semantic-features chapter shows: numbers for the prose, tables, and frames for the figures."""

    params: SemanticParams
    context_size: int
    n_ctx: int
    d_vocab: int
    positions: range  # in_context_positions(context_size, n_ctx): every count and score is over these
    counts: dict[str, float]  # semantic_counts over `positions`
    by_range: dict[str, dict[str, float]]  # semantic_counts over each of position_ranges(...)
    curve: pd.DataFrame  # sorted_scores_frame
    scores: pd.DataFrame  # scores_frame
    top: pd.DataFrame  # one row per (token of interest, rank): label, feature, mean_activation, r2s, cv, semantic
    token_profiles: pd.DataFrame  # label, rank, feature, position, activation (every position of W_pos)
    invariance: pd.DataFrame  # position_invariance_frame
    best: pd.DataFrame  # most_invariant_features, with top_labels
    best_profiles: pd.DataFrame  # label, feature, position, activation for the first N_INVARIANT_PROFILES of best
    interaction: Float[Tensor, " d_sae"]  # interaction_share over `positions`
    carry: dict[str, object]  # text_carry of the position-modulated features (interaction >= INTERACTION_SHARE)
    frequent_labels: list[str]  # the decoded tokens of carry["frequent"]

    @property
    def kinds_table(self) -> pd.DataFrame:
        """Return the counts of features by kind, for display."""
        return kinds_table(self.counts, self.params.threshold)

    @property
    def ranges_table(self) -> pd.DataFrame:
        """Return the counts over each range of positions, for display."""
        return ranges_table(self.by_range)

    @property
    def pages(self) -> FeaturePages:
        """Return the Neuronpedia pages of the SAE's features (none for the organism)."""
        return FeaturePages(self.params.sae_release, self.params.sae_id)

    @property
    def top_table(self) -> pd.DataFrame:
        """Return the tokens of interest's top features, for display (ids linked where Neuronpedia hosts the SAE)."""
        return top_features_table(self.top, self.pages)

    @property
    def invariant_table(self) -> pd.DataFrame:
        """Return the most position-invariant features, for display (ids linked where Neuronpedia hosts the SAE)."""
        return invariant_table(self.best, self.pages)

    def glued(self) -> dict[str, float | int | str]:
        """Return every value the prose cites, under the chapter's 'sem_' names (never NaN)."""
        c, p = self.counts, self.params
        widest = list(self.by_range.items())[-1]
        return {
            "sem_context": self.context_size, "sem_n_ctx": self.n_ctx, "sem_last_pos": self.positions[-1],
            "sem_first_pos": self.positions[0], "sem_d_vocab": self.d_vocab, "sem_threshold": p.threshold,
            "sem_positional_threshold": POSITIONAL_R2, "sem_top_k": p.top_k, "sem_n_top_tokens": N_TOP_TOKENS,
            "sem_n_features": c["n_features"], "sem_n_semantic": c["n_semantic"],
            "sem_semantic_share": c["semantic_share"], "sem_n_positional": c["n_positional"],
            "sem_counts_sentence": counts_sentence(c), "sem_typical_sentence": typical_sentence(c, p.threshold),
            "sem_both_sentence": both_sentence(c, p.threshold), "sem_n_both": c["n_both"],
            "sem_all_range": widest[0].split(" ")[0], "sem_all_n_semantic": widest[1]["n_semantic"],
            "sem_all_share": widest[1]["semantic_share"],
            "sem_range_sentence": range_sentence(self.by_range, self.context_size, self.n_ctx),
            "sem_pairs_sentence": pairs_sentence(self.top),
            "sem_pairs_summary": pairs_summary_sentence(self.top, p.top_k),
            "sem_inv_sentence": invariance_sentence(self.invariance, self.best, p.threshold),
            "sem_inv_summary": invariance_summary_sentence(self.invariance, self.best, p.threshold),
            "sem_links_sentence": self.pages.sentence(),
            "sem_interaction_threshold": INTERACTION_SHARE, "sem_n_entangled": self.n_entangled,
            "sem_entangled_firing_share": self.carry["firing_share"], "sem_entangled_mass_share": self.carry["mass_share"],
            "sem_text_inputs": self.carry["inputs"],
            "sem_entangled_sentence": entangled_sentence(self.carry, self.interaction, self.n_entangled, c["n_features"],
                                                         self.frequent_labels),
        }

    @property
    def n_entangled(self) -> int:
        """Return how many firing features are position-modulated (interaction share >= INTERACTION_SHARE)."""
        return int((self.interaction >= INTERACTION_SHARE).sum())


def top_features_of_tokens(W_E: Float[Tensor, "d_vocab d_model"], W_pos: Float[Tensor, "n_ctx d_model"], sae: SAE,
                           stats: Layer0Stats, token_ids: list[int], labels: list[str], top_k: int, threshold: float,
                           device: str | torch.device | None = None) -> pd.DataFrame:
    """Return one row per (token, rank): label, feature, mean activation over stats.positions, R2s, cv, semantic."""
    means = chosen_token_means(W_E, W_pos, sae, token_ids, positions=stats.positions, device=device)
    top = token_top_features_frame(means, token_ids, top_k)
    top.insert(1, "label", top["token"].map(dict(zip(token_ids, labels))))
    feats = torch.tensor(top["feature"].to_numpy(dtype=np.int64, copy=True))
    top["r2_tok"] = stats.r2_tok[feats].numpy()
    top["r2_pos"] = stats.r2_pos[feats].numpy()
    prof = pair_profiles(W_E, W_pos, sae, top["token"].values, top["feature"].values, positions=stats.positions,
                         device=device)
    fires = torch.tensor(top["mean_activation"].to_numpy(dtype=np.float64, copy=True)) > 0
    top["cv"] = torch.where(fires, variation_over_positions(prof), torch.tensor(math.nan, dtype=torch.float64)).numpy()
    top["semantic"] = top["r2_tok"] >= threshold
    return top


def top_feature_profiles(W_E: Float[Tensor, "d_vocab d_model"], W_pos: Float[Tensor, "n_ctx d_model"], sae: SAE,
                         top: pd.DataFrame, device: str | torch.device | None = None) -> pd.DataFrame:
    """Return, for each row of `top`, its feature's activation on its token at every position (label and rank kept)."""
    prof = pair_profiles(W_E, W_pos, sae, top["token"].values, top["feature"].values, device=device)
    n_pos = prof.shape[0]
    return pd.DataFrame({
        "label": np.repeat(top["label"].values, n_pos),
        "rank": np.repeat(top["rank"].values, n_pos),
        "feature": np.repeat(top["feature"].values, n_pos),
        "position": np.tile(np.arange(n_pos), len(top)),
        "activation": prof.T.flatten().numpy(),
    })


def analyze(model, sae: SAE, params: SemanticParams,
            text: Int[Tensor, "n_windows C"] | None = None) -> SemanticResult:
    """Return the chapter's result: exact scores over the in-context positions, ranges, top features, invariance, and
    the share of text the position-modulated features carry (over `text`: windows of the SAE's context; None: the
    held-out windows, n_heldout_tokens per corpus)."""
    require_layer0(sae, "The semantic-features chapter")
    W_E, W_pos, dev = model.W_E, model.W_pos, params.device
    token_ids = single_token_ids(model.tokenizer, list(params.tokens_of_interest), W_E.shape[0])
    n_ctx = W_pos.shape[0]
    context_size = sae_context_size(sae, n_ctx)
    ranges = position_ranges(context_size, n_ctx)
    stats_by_range = {name: layer0_stats(W_E, W_pos, sae, positions=r, device=dev, progress=False)
                      for name, r in ranges.items()}
    stats = next(iter(stats_by_range.values()))
    top = top_features_of_tokens(W_E, W_pos, sae, stats, token_ids, decode_tokens(model.tokenizer, token_ids),
                                 params.top_k, params.threshold, dev)
    frame = position_invariance_frame(W_E, W_pos, sae, stats, n_top_tokens=N_TOP_TOKENS, device=dev, progress=False)
    best = most_invariant_features(frame, params.threshold, n=N_INVARIANT)
    best = best.assign(top_labels=[decode_tokens(model.tokenizer, t) for t in best["top_tokens"]])
    shown = best.head(N_INVARIANT_PROFILES)
    pairs = pd.DataFrame({"token": shown["top_token"].values, "feature": shown.index.values, "rank": 1,
                          "label": [f"feature {i} on {t[0]}" for i, t in zip(shown.index, shown["top_labels"])]})
    from possae.heldout import heldout_windows

    interaction = torch.where(alive_features(stats), interaction_share(stats), torch.zeros_like(stats.r2_tok))
    if text is None:
        text = heldout_windows(model.tokenizer, context_size, params.n_heldout_tokens)
    carry = text_carry(W_E, W_pos, sae, text,
                       interaction >= INTERACTION_SHARE, in_context_positions(context_size, n_ctx),
                       ignore=special_token_ids(model.tokenizer))
    return SemanticResult(
        params=params, context_size=context_size, n_ctx=n_ctx, d_vocab=W_E.shape[0], 
        positions=in_context_positions(context_size, n_ctx),
        counts=semantic_counts(stats, params.threshold),
        by_range={name: semantic_counts(st, params.threshold) for name, st in stats_by_range.items()},
        curve=sorted_scores_frame(stats), scores=scores_frame(stats, params.threshold), top=top,
        token_profiles=top_feature_profiles(W_E, W_pos, sae, top, dev), invariance=frame, best=best,
        best_profiles=top_feature_profiles(W_E, W_pos, sae, pairs, dev) if len(pairs) else
        pd.DataFrame(columns=["label", "rank", "feature", "position", "activation"]),
        interaction=interaction, carry=carry,
        frequent_labels=decode_tokens(model.tokenizer, carry["frequent"]["token"].tolist()),
    )

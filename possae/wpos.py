"""Geometry of a positional embedding matrix: principal components and adjacent-position similarity."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def pca(W: Float[Tensor, "n_pos d_model"]) -> tuple[Float[Tensor, "n_pos n_pos"], Float[Tensor, " k"], Float[Tensor, "k d_model"]]:
    """Return (scores, explained variance ratios, components) of the mean-centred rows of W (float64 in, float64 out)."""
    out = torch.promote_types(W.dtype, torch.float32)
    X = W.double() - W.double().mean(0, keepdim=True)
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    var = S**2
    return (U * S).to(out), (var / var.sum()).to(out), Vh.to(out)


def top_k_variance_share(W: Float[Tensor, "n_pos d_model"], k: int = 3) -> float:
    """Return the share of the centred rows' variance explained by the top k principal components."""
    return pca(W)[1][:k].sum().item()


def adjacent_cosine(W: Float[Tensor, "n_pos d_model"]) -> float:
    """Return the mean cosine similarity between consecutive rows of W."""
    return torch.nn.functional.cosine_similarity(W[1:].double(), W[:-1].double(), dim=-1).mean().item()


def position_cosine_matrix(W: Float[Tensor, "n_pos d_model"]) -> Float[Tensor, "n_pos n_pos"]:
    """Return the cosine similarity of every pair of rows of W."""
    Wn = torch.nn.functional.normalize(W.double(), dim=-1)
    return (Wn @ Wn.T).float()


def wpos_geometry(W_pos: Float[Tensor, "n_ctx d_model"], first: int = 1, last: int | None = None, k: int = 3) -> dict[str, float]:
    """Return {'top{k}_share', 'adjacent_cosine'} over rows first..last-1 (position 0 is excluded by default)."""
    rows = W_pos[first:last]
    return {f"top{k}_share": top_k_variance_share(rows, k), "adjacent_cosine": adjacent_cosine(rows)}


def load_gpt2_wpos(path=None) -> Float[Tensor, "1024 768"]:
    """Return GPT-2 small's raw W_pos: from `path` (a .npy file) if given, else from the evaluation pack."""
    import numpy as np

    from possae.evalpack import gpt2_wpos

    return torch.from_numpy(np.load(path) if path is not None else gpt2_wpos()).float()


def project_wpos(W_pos: Float[Tensor, "n_ctx d_big"], d: int, first: int = 1) -> tuple[Float[Tensor, "n_ctx d"], dict[str, float]]:
    """Return every row of W_pos projected on the top d principal directions of rows first.. (their centred PCA),
    as coordinates in those directions, and what the projection keeps (variance of those rows, norm of all rows)."""
    _, ratios, Vh = pca(W_pos[first:].double())
    V = Vh[:d].T  # d_big x d, orthonormal columns
    P = W_pos.double() @ V
    facts = {"rows": f"{first}..{len(W_pos) - 1}", "directions": d, "variance_kept": ratios[:d].sum().item(),
             "norm_kept": (P.norm() / W_pos.double().norm()).item(), "row0_norm_kept": (P[0].norm() / W_pos[0].double().norm()).item()}
    return P.float(), facts


def last_row(W_pos: Float[Tensor, "n_ctx d_model"]) -> dict[str, float]:
    """Return the last row's norm, its neighbour's norm and their cosine (a row no loss reached stays at its init)."""
    last, prev = W_pos[-1].double(), W_pos[-2].double()
    return {"norm": last.norm().item(), "previous_norm": prev.norm().item(),
            "cosine_to_previous": torch.nn.functional.cosine_similarity(last, prev, dim=0).item()}


def pc_winding(W_pos: Float[Tensor, "n_rows d_model"], n_components: int = 3) -> dict[str, float]:
    """Return how far the centred rows wind: turns swept around their centroid in the PC1-PC2 plane (net unwrapped
    angle / 2 pi; an arc of a fraction f of a circle reads more than f, but under 1), each top
    component's zero crossings, and the period in rows implied by PC1's and PC2's crossings (two per period)."""
    scores = pca(W_pos)[0].double()
    angle = torch.atan2(scores[:, 1], scores[:, 0])
    step = torch.remainder(angle.diff() + torch.pi, 2 * torch.pi) - torch.pi  # each step's angle, in (-pi, pi]
    turns = abs(step.sum().item()) / (2 * torch.pi)
    signs = torch.sign(scores[:, :n_components])
    crossings = [int((signs[1:, k] * signs[:-1, k] < 0).sum()) for k in range(n_components)]
    half_periods = (crossings[0] + crossings[1]) / 2
    return {"turns": turns, **{f"pc{k + 1}_crossings": c for k, c in enumerate(crossings)},
            "period_rows": (len(W_pos) / (half_periods / 2)) if half_periods else float("inf")}


def norm_ratio(W_pos: Float[Tensor, "n_ctx d_model"], W_E: Float[Tensor, "d_vocab d_model"], first: int = 1) -> float:
    """Return W_pos's mean row norm (rows first..) over W_E's: how loud position is against the token at layer 0."""
    return (W_pos[first:].detach().double().norm(dim=1).mean() / W_E.detach().double().norm(dim=1).mean()).item()


MIN_TURNS = 1.0  # a W_pos "turns" from one whole turn on (below, an arc): an oscillation with position follows W_pos
# around, so an arc cannot drive a periodic pattern, and the oscillation claims need at least this (GPT-2 small: 3.4)


def winding_word(turns: float) -> str:
    """Return how to call a curve that winds `turns` times: an arc below one full turn, else a helix of that many turns."""
    return f"an arc ({turns:.2f} of a turn)" if turns < MIN_TURNS else f"a helix of {turns:.1f} turns"

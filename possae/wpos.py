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


def last_row(W_pos: Float[Tensor, "n_ctx d_model"]) -> dict[str, float]:
    """Return the last row's norm, its neighbour's norm and their cosine (a row no loss reached stays at its init)."""
    last, prev = W_pos[-1].double(), W_pos[-2].double()
    return {"norm": last.norm().item(), "previous_norm": prev.norm().item(),
            "cosine_to_previous": torch.nn.functional.cosine_similarity(last, prev, dim=0).item()}

import math

import numpy as np
import torch

from possae.wpos import adjacent_cosine, load_gpt2_wpos, position_cosine_matrix, top_k_variance_share, wpos_geometry


def _helix(n=200, d=32, turns=2.0):
    t = torch.arange(n, dtype=torch.float64) / n
    W = torch.zeros(n, d, dtype=torch.float64)
    W[:, 0], W[:, 1], W[:, 2] = torch.cos(2 * math.pi * turns * t), torch.sin(2 * math.pi * turns * t), t
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    return (W @ Q).float()


def test_a_rotated_helix_lives_in_three_components():
    assert abs(top_k_variance_share(_helix(), 3) - 1.0) < 1e-5
    assert top_k_variance_share(_helix(), 2) < 0.99


def test_adjacent_cosine_of_a_circle_is_cos_of_the_step():
    n = 64
    a = torch.arange(n) * (2 * math.pi / n)
    W = torch.stack([torch.cos(a), torch.sin(a)], 1)
    assert abs(adjacent_cosine(W) - math.cos(2 * math.pi / n)) < 1e-6
    C = position_cosine_matrix(W)
    assert torch.allclose(C.diagonal(), torch.ones(n)) and abs(C[0, n // 2].item() + 1) < 1e-6


def test_noise_has_neither_low_rank_nor_smoothness():
    W = torch.randn(255, 128, generator=torch.Generator().manual_seed(1))
    g = wpos_geometry(torch.cat([torch.zeros(1, 128), W]))
    assert g["top3_share"] < 0.1 and abs(g["adjacent_cosine"]) < 0.05


def test_gpt2_wpos_reads_from_the_pack_as_documented(tmp_path):
    W = load_gpt2_wpos()
    assert W.shape == (1024, 768) and W.dtype == torch.float32
    assert torch.allclose(W[0, :3], torch.tensor([-0.01882, -0.19742, 0.00403]), atol=5e-6)
    assert abs(wpos_geometry(W, 1, 128)["top3_share"] - 0.957) < 0.001
    assert abs(wpos_geometry(W, 1, 256)["adjacent_cosine"] - 0.998) < 0.001
    np.save(tmp_path / "w.npy", W[:5].numpy())
    assert torch.equal(load_gpt2_wpos(tmp_path / "w.npy"), W[:5])

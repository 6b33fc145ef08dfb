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


def _coil(n: int, turns: float, d: int = 8) -> torch.Tensor:
    """Rows tracing `turns` turns of a circle in dims 0-1, climbing slowly in dim 2, embedded in d dims."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    W = torch.zeros(n, d, dtype=torch.float64)
    W[:, 0], W[:, 1], W[:, 2] = torch.cos(2 * torch.pi * turns * t), torch.sin(2 * torch.pi * turns * t), 0.1 * t
    return W


def test_pc_winding_counts_the_turns_of_a_helix_and_an_arc():
    from possae.wpos import pc_winding, winding_word

    helix = pc_winding(_coil(1000, 3.0))
    assert abs(helix["turns"] - 3.0) < 0.01 and abs(helix["period_rows"] - 1000 / 3) < 1000 / 3 * 0.1
    arc = pc_winding(_coil(256, 0.4))
    assert 0.4 < arc["turns"] < 1  # seen from its centroid an arc sweeps more than its own 0.4 turn, but under one
    from possae.wpos import top_k_variance_share

    assert top_k_variance_share(_coil(256, 0.4).float()) > 0.99
    assert winding_word(arc["turns"]).startswith("an arc") and winding_word(helix["turns"]).startswith("a helix of 3.0")


def test_project_wpos_keeps_an_exact_low_rank_embedding_and_reports_what_it_keeps():
    from possae.wpos import pc_winding, project_wpos

    gen = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(32, 32, generator=gen, dtype=torch.float64))[0]
    W = _coil(200, 2.0) @ Q[:8]  # rank <= 3 after centring, rotated into 32 dims
    P, facts = project_wpos(W.float(), 4)
    assert P.shape == (200, 4) and facts["variance_kept"] > 1 - 1e-6
    assert abs(pc_winding(P[1:])["turns"] - pc_winding(W[1:])["turns"]) < 1e-4
    G = W.double()[1:] - W.double()[1:].mean(0)
    Pc = P.double()[1:] - P.double()[1:].mean(0)
    assert torch.allclose(G @ G.T, Pc @ Pc.T, atol=1e-4)  # the centred geometry is kept exactly
    _, few = project_wpos(W.float(), 1)
    assert few["variance_kept"] < 0.9


def test_gpt2_geometry_check_passes_the_projection_and_fails_an_arc():
    from possae.organism.card import gpt2_geometry_check
    from possae.wpos import load_gpt2_wpos, project_wpos

    gpt2 = load_gpt2_wpos()
    assert gpt2_geometry_check(project_wpos(gpt2, 128)[0], gpt2)["passes"]
    assert not gpt2_geometry_check(_coil(1024, 0.6, 16).float(), gpt2)["passes"]


def test_the_shipped_gpt2pos_organism_carries_gpt2s_geometry_and_live_saes():
    import dataclasses
    import json

    from possae.loaders import load_model
    from possae.organism.card import DEAD_SHARE_TARGET, gpt2_geometry_check
    from possae.organism.recipe import GPT2POS_ARTIFACTS, SAERecipe, variant_saes

    model = load_model("organism-gpt2pos", device="cpu")
    check = gpt2_geometry_check(model.W_pos.detach(), load_gpt2_wpos())
    assert check["passes"], check
    card = json.loads((GPT2POS_ARTIFACTS / "model_card.json").read_text())
    assert set(card["saes"]) == {r.sae_id for r in variant_saes("gpt2")}
    over = [k for k, s in card["saes"].items() if s["heldout"]["dead_share"] > DEAD_SHARE_TARGET]
    recipes = {r.sae_id: r for r in variant_saes("gpt2")}
    # every ReLU SAE trained from scratch is live; the card names each SAE above the target (TopK SAEs past layer 0
    # leave many latents silent on this organism, and the fine-tuning sweep's best rate silences many of relu-short's:
    # the past-context chapter reports that share beside the verdicts)
    assert not [k for k in over if card["saes"][k]["architecture"] == "standard" and recipes[k].init_from is None]
    assert f"Above the target of 10% dead: {', '.join(over) if over else 'none'}." in \
        (GPT2POS_ARTIFACTS / "MODEL_CARD.md").read_text()
    shipped = {k: json.loads((GPT2POS_ARTIFACTS / "saes" / k / "training.json").read_text())["recipe"] for k in card["saes"]}
    defaults = {f.name: f.default for f in dataclasses.fields(SAERecipe)}
    # every SAE was trained by today's recipe (a field a stored recipe predates holds its default today)
    assert shipped == {k: {f: v for f, v in r.to_dict().items() if f in shipped[k] or v != defaults[f]}
                       for k, r in recipes.items()}
    assert card["gpt2_check"]["passes"] and card["wpos_projection"]["variance_kept"] > 0.999

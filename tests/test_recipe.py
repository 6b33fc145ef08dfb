"""The organism's SAE suite: every id unique, and each matching SAE differs from the base in one named way."""

import dataclasses

from possae.organism.recipe import MATCHING_GROUPS, OrganismRecipe, layer_saes, matching_saes

VARIED = {"corpora", "seed", "expansion", "k", "architecture"}


def _diff(a, b) -> set[str]:
    skip = {"sae_id", "description", "init_seed"}  # every matching SAE has its own init seed (checked below)
    return {f.name for f in dataclasses.fields(a) if f.name not in skip and getattr(a, f.name) != getattr(b, f.name)}


def test_sae_ids_are_unique():
    ids = [r.sae_id for r in OrganismRecipe().saes]
    assert len(ids) == len(set(ids))


def test_every_layer_has_a_relu_short_context_and_a_topk_full_context_sae():
    n_layers, n_ctx = 4, 256
    recipes = {r.sae_id: r for r in layer_saes(n_layers, n_ctx)}
    for layer in range(n_layers):
        topk = recipes[f"topk-L{layer}"]
        assert topk.hook_name == f"blocks.{layer}.hook_resid_pre" and topk.context_size == n_ctx and topk.k == 16
    for layer in range(1, n_layers):  # layer 0's ReLU SAE is relu-short
        assert recipes[f"relu-L{layer}"].context_size == n_ctx // 4


def test_matching_suite_varies_one_thing_at_a_time_on_one_budget():
    suite = {r.sae_id: r for r in matching_saes(layer=2)}
    base = suite.pop("match-base")
    assert {r.training_tokens for r in suite.values()} == {base.training_tokens}
    assert {r.hook_name for r in suite.values()} == {"blocks.2.hook_resid_pre"}
    expected = {f"match-{g}": {"corpora"} for g in MATCHING_GROUPS}
    expected |= {"match-stories-seed2": {"corpora", "seed"}, "match-technical-seed2": {"corpora", "seed"},
                 "match-seed2": {"seed"}, "match-4x": {"expansion"}, "match-8x": {"expansion"},
                 "match-k8": {"k"}, "match-k32": {"k"}, "match-batchtopk": {"architecture"},
                 # the pre-activation loss is JumpReLU's own: no other architecture reads that field
                 "match-jumprelu": {"architecture", "pre_act_loss_coefficient"}}
    assert {k: _diff(r, base) for k, r in suite.items()} == expected
    for group in ("stories", "technical"):  # second seeds differ from their first seed only by the seed
        assert _diff(suite[f"match-{group}-seed2"], suite[f"match-{group}"]) == {"seed"}
    assert len({c for g in MATCHING_GROUPS.values() for c in g}) == sum(len(g) for g in MATCHING_GROUPS.values())
    # each starts from its own initial weights: a seed pair differs in its initialisation and its data order
    seeds = [r.init_seed for r in (base, *suite.values())]
    assert None not in seeds and len(set(seeds)) == len(seeds)


def test_gpt2pos_recipes_fix_gpt2s_wpos_and_refuse_contradictions():
    import pytest

    from possae.organism.recipe import LMRecipe, gpt2pos_saes, lm_recipe

    r = lm_recipe("cpu", "gpt2")
    assert r.wpos == "gpt2" and r.n_ctx == 1024 and not r.zero_init_wpos
    with pytest.raises(ValueError, match="wpos 'gpt2'"):
        LMRecipe(n_ctx=1024, wpos="gpt2")  # zero_init_wpos left True
    with pytest.raises(ValueError, match="wpos is one of"):
        LMRecipe(wpos="sinusoidal")
    assert lm_recipe("cpu", "rotary").positional_embedding_type == "rotary"
    suite = {s.sae_id: s for s in gpt2pos_saes()}
    assert suite["relu-short"].context_size == 128 and suite["relu-full"].context_size == 1024
    assert sorted(s.expansion for s in suite.values() if s.context_size == 128) == [8, 16, 32, 64]


def test_a_fresh_jumprelu_sae_starts_at_its_target_l0():
    """jumprelu_start_threshold puts a fresh sae_lens JumpReLU SAE's L0 at the target on inputs of norm sqrt(d_in)."""
    import pytest
    import torch
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    from possae.organism.saes import jumprelu_start_threshold

    d_in, d_sae, k = 64, 2048, 16
    torch.manual_seed(0)
    sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, jumprelu_init_threshold=jumprelu_start_threshold(k, d_sae), apply_b_dec_to_input=False))
    x = torch.randn(4096, d_in)
    x = x * (d_in**0.5 / x.norm(dim=-1, keepdim=True))
    l0 = (sae.encode(x) > 0).float().sum(-1).mean().item()
    assert 0.7 * k < l0 < 1.3 * k
    with pytest.raises(ValueError, match="strictly between 0 and d_sae"):
        jumprelu_start_threshold(d_sae, d_sae)

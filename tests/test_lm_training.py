"""The organism's trainer: every position is scored, the last-row continuation moves nothing else, recipes are named,
and sae_lens's dead-latent losses are recorded."""

import pytest
import torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

from possae.cli import main
from possae.organism.lm import build_model, freeze_all_but_last_wpos_row, lm_config, next_token_loss, train_language_model
from possae.organism.recipe import LM_RECIPES, LMRecipe, SAERecipe, cpu_hours, lm_recipe
from possae.organism.saes import DeadLatentLossRecorder, runner_config

TINY = LMRecipe(d_vocab=50, d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_ctx=8, batch_size=3)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(lm_config(TINY))


def test_next_token_loss_scores_all_n_ctx_positions_and_trains_the_last_wpos_row(tiny_model):
    tokens = torch.randint(0, TINY.d_vocab, (3, TINY.n_ctx + 1))
    loss = next_token_loss(tiny_model, tokens)
    logits = tiny_model(tokens[:, :-1])
    assert logits.shape[1] == TINY.n_ctx
    by_hand = -logits.log_softmax(-1).gather(-1, tokens[:, 1:, None]).mean()
    assert torch.allclose(loss, by_hand, atol=1e-6)
    loss.backward()
    assert tiny_model.W_pos.grad[-1].abs().sum() > 0  # the bug this fixes: no gradient ever reached the last row
    tiny_model.zero_grad()
    next_token_loss(tiny_model, tokens[:, :-1]).backward()  # windows of n_ctx tokens: the last row gets nothing
    assert tiny_model.W_pos.grad[-1].abs().sum() == 0


def test_last_row_continuation_changes_only_the_last_wpos_row(tiny_model):
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    freeze_all_but_last_wpos_row(tiny_model)
    opt = torch.optim.AdamW([tiny_model.W_pos], lr=1e-2, weight_decay=0.0)
    for _ in range(3):
        next_token_loss(tiny_model, torch.randint(0, TINY.d_vocab, (3, TINY.n_ctx + 1))).backward()
        opt.step()
        opt.zero_grad()
    after = dict(tiny_model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if n != "pos_embed.W_pos")
    assert torch.equal(after["pos_embed.W_pos"][:-1], before["pos_embed.W_pos"][:-1])
    assert not torch.equal(after["pos_embed.W_pos"][-1], before["pos_embed.W_pos"][-1])


def test_recipes_are_named_and_the_gpu_recipe_refuses_a_cpu(capsys):
    assert lm_recipe("gpu") == LMRecipe() and LMRecipe().train_tokens == 180_000_000
    assert lm_recipe("cpu").train_tokens == 10_500_000 and lm_recipe("continue").trainable == "last_wpos_row"
    with pytest.raises(ValueError, match="Unknown language-model recipe 'tpu' for the standard organism; recipes: gpu, cpu, continue"):
        lm_recipe("tpu")
    assert cpu_hours(LM_RECIPES["gpu"]) == pytest.approx(180_000_000 / 2_750 / 3600)
    with pytest.raises(SystemExit, match=r"about 18 h on 2 CPU cores.*--recipe cpu: about 64 min"):
        main(["organism", "model", "--device", "cpu"])
    with pytest.raises(SystemExit, match="--init-from"):
        main(["organism", "model", "--recipe", "continue", "--device", "cpu"])


def test_continuing_from_a_folder_without_a_model_fails_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere/model/model\.safetensors"):
        train_language_model(TINY, out_dir=tmp_path, work_dir=tmp_path, init_from=tmp_path / "nowhere")


def test_unknown_trainable_setting_is_refused():
    with pytest.raises(ValueError, match="trainable is 'all' or 'last_wpos_row', not 'everything'"):
        LMRecipe(trainable="everything")


def test_dead_latent_window_is_counted_in_steps_and_reaches_sae_lens():
    r = SAERecipe("x", training_tokens=1_000_000, batch_size_tokens=1024, dead_window_tokens=100_000)
    assert r.steps == 976 and r.dead_feature_window == 97
    cfg = runner_config(r, d_in=16, out_path=".", device="cpu")
    assert cfg.dead_feature_window == 97 < r.steps  # sae_lens's default, 1,000 steps, is longer than the run


def test_decoder_init_norm_reaches_sae_lens_and_sets_the_starting_weights():
    """The recipe's decoder_init_norm is the norm of every decoder row sae_lens starts from (W_enc = W_dec.T); the
    GPT-2-geometry organism's TopK SAEs start at GPT2POS_TOPK_INIT_NORM, the rest at sae_lens's 0.1."""
    from sae_lens import TrainingSAE

    from possae.organism.recipe import GPT2POS_TOPK_INIT_NORM, gpt2pos_layer_saes
    from possae.organism.saes import _training_sae_config

    for norm in (0.1, 1.0):
        r = SAERecipe("x", architecture="topk", expansion=4, k=2, decoder_init_norm=norm)
        cfg = runner_config(r, d_in=16, out_path=".", device="cpu")
        sae = TrainingSAE.from_dict(_training_sae_config(r, 16).to_dict())
        assert cfg.sae.decoder_init_norm == norm
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((64,), norm))
        torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    norms = {r.sae_id: r.decoder_init_norm for r in gpt2pos_layer_saes()}
    assert {k: v for k, v in norms.items() if k.startswith("topk")} == {f"topk-L{i}": GPT2POS_TOPK_INIT_NORM
                                                                         for i in range(4)}
    assert {v for k, v in norms.items() if not k.startswith("topk")} == {0.1}


def test_dead_latent_loss_recorder_sees_the_topk_auxiliary_loss_fire_only_on_dead_latents():
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=8, d_sae=32, k=2))
    original = TopKTrainingSAE.calculate_aux_loss
    x = torch.randn(16, 8)

    def step(mask):
        return sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=mask,
                                                        n_training_steps=0, is_logging_step=False))

    with DeadLatentLossRecorder() as rec:
        step(None)
        step(torch.zeros(32, dtype=torch.bool))
        out = step(torch.ones(32, dtype=torch.bool))
    assert TopKTrainingSAE.calculate_aux_loss is original  # restored on exit
    assert rec.values[:2] == [0.0, 0.0] and rec.values[2] == pytest.approx(out.losses["auxiliary_reconstruction_loss"].item())
    assert rec.summary(steps=3) == {"steps": 3, "steps_recorded": 3, "steps_fired": 1, "first_fired_step": 2,
                                    "mean_when_fired": pytest.approx(rec.values[2])}


def _facts(tokens, positions=None, init=None, trainable="all"):
    recipe = {**LMRecipe(train_tokens=tokens, trainable=trainable).to_dict()}
    f = {"recipe": recipe, "steps": 10, "tokens_seen": tokens, "train_stream_tokens": 100, "epochs": tokens / 100,
         "train_seconds": 5.0, "device": "X", "history": [{"step": 10, "loss": 1.0}]}
    if positions is not None:
        f["positions_scored"] = positions
    if init is not None:
        f["init"] = {"sha256": "ab" * 32, "training": init}
    return f


def test_training_stages_unroll_the_init_chain_and_survive_the_card_round_trip(tmp_path, monkeypatch):
    import json

    from possae.organism import card as card_mod

    facts = _facts(300, positions=256, init=_facts(200), trainable="last_wpos_row")
    stages = card_mod.training_stages(facts)
    assert [s["tokens_seen"] for s in stages] == [200, 300]
    assert [s["positions_scored"] for s in stages] == [255, 256]  # the first stage's trainer scored n_ctx - 1
    assert "init_sha256" not in stages[0] and stages[1]["init_sha256"] == "ab" * 32
    card = {"training_stages": [{k: v for k, v in s.items() if k != "history"} for s in stages],
            "training_curve": [{"stage": i, **row} for i, s in enumerate(stages) for row in s["history"]],
            "architecture": {"n_ctx": 256},
            "heldout": [{"last_position_loss": 3.0, "near_end_loss": 2.0}, {"last_position_loss": 4.0, "near_end_loss": 3.0}]}
    (tmp_path / card_mod.CARD_JSON).write_text(json.dumps(card))
    monkeypatch.setenv("POSSAE_BUILD", str(tmp_path / "build"))  # no lm_training.json there: read the card
    assert card_mod.lm_training_stages(tmp_path) == json.loads(json.dumps(stages))
    note = card_mod.organism_training_note(card)
    assert note.startswith("The organism's language model was trained in 2 stages: stage 1 trained every weight on 200")
    assert "stage 2 trained only W_pos[n_ctx - 1] on 300 tokens" in note and "W_pos[255] stayed zero" in note
    assert note.endswith("position 255: 3.500 nats, against 2.500 over the 16 positions before it (mean of the corpora).")
    assert card_mod.stages_frame(card)["trained"].tolist() == ["all weights", "W_pos[n_ctx - 1] only"]


def test_last_row_reports_norms_and_cosine():
    from possae.wpos import last_row

    W = torch.tensor([[9.0, 9.0], [3.0, 4.0], [0.0, 2.0]])
    assert last_row(W) == pytest.approx({"norm": 2.0, "previous_norm": 5.0, "cosine_to_previous": 0.8})
    assert last_row(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))["cosine_to_previous"] == 0.0  # an untrained zero row

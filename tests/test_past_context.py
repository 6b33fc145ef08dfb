"""The past-context chapter: spliced loss per position, the fine-tuning fix, the rotary control (constructed inputs)."""

import ast
from pathlib import Path

import pandas as pd
import pytest
import torch

from builders import make_sae, make_tiny_model
from possae import past_context as PC
from possae.book import chapter_parameters
from possae.hooks import resid_pre
from possae.length import CONTROL_LABEL, FIX_LABELS, SAE_LABEL, ErrorSummary
from possae.metrics import PositionSums
from possae.params import ParameterError

CHAPTER = Path(__file__).resolve().parent.parent / "chapters" / "past_context.py"


def identity_sae(d: int, hook: str = resid_pre(0), context_size: int = 4):
    """Return a ReLU SAE that reconstructs every input exactly: features relu(x) and relu(-x), decoder [I; -I]."""
    sae = make_sae("standard", d=d, F=2 * d, hook=hook)
    eye = torch.eye(d, dtype=torch.float64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.cfg.metadata.context_size = context_size
    return sae


def zero_sae(d: int, hook: str = resid_pre(0), context_size: int = 4):
    """Return a ReLU SAE whose reconstruction is always 0 (decoder and biases zero)."""
    sae = identity_sae(d, hook, context_size)
    with torch.no_grad():
        sae.W_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def tiny_model():
    """A 2-layer float64 model with the organism's tokenizer and n_ctx 10."""
    return make_tiny_model(n_layers=2)


def windows(model, n_windows=6, seed=0):
    """Return random token windows of n_ctx + 1 tokens starting with BOS."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(300, 2000, (n_windows, model.cfg.n_ctx + 1), generator=g)
    w[:, 0] = model.tokenizer.bos_token_id
    return w


def test_params_are_the_chapter_cell_and_reject_bad_values():
    assert chapter_parameters(CHAPTER) == set(PC.PastContextParams.names())
    with pytest.raises(ParameterError, match="finetune_sae_ids"):
        PC.PastContextParams(finetune_sae_ids=("relu-short-ft7k",))
    with pytest.raises(ParameterError, match="n_heldout_tokens"):
        PC.PastContextParams(n_heldout_tokens=0)
    with pytest.raises(ParameterError, match="valid parameters"):
        PC.PastContextParams.from_mapping({"rotary_ids": []})


def test_chapter_holds_no_logic():
    code = "\n".join(line for line in CHAPTER.read_text().splitlines() if not line.startswith("#"))
    tree = ast.parse(code)
    banned = (ast.If, ast.IfExp, ast.For, ast.While, ast.ListComp, ast.DictComp)
    assert not [type(n).__name__ for n in ast.walk(tree) if isinstance(n, banned)]
    assert "print(" not in code


def test_spliced_ce_equals_running_from_the_replaced_stream(tiny_model):
    """Splicing a stream at layer 0 through a hook equals starting the model at layer 0 from that stream."""
    model = tiny_model
    w = windows(model)
    tok, tgt = w[:, :-1], w[:, 1:]
    g = torch.Generator().manual_seed(1)
    replacement = torch.randn(*tok.shape, 6, generator=g, dtype=torch.float64)
    spliced = PC.spliced_ce(model, tok, tgt, resid_pre(0), replacement)
    direct = PC.next_token_ce(model(replacement, start_at_layer=0, tokens=tok), tgt)
    torch.testing.assert_close(spliced, direct)
    _, cache = model.run_with_cache(tok, names_filter=resid_pre(0))
    clean = PC.next_token_ce(model(tok), tgt)
    torch.testing.assert_close(PC.spliced_ce(model, tok, tgt, resid_pre(0), cache[resid_pre(0)]), clean)


def test_mean_loss_is_the_clean_loss_the_splice_pass_pools(tiny_model):
    """_mean_loss (its own pass) and splice_position_sums's ce:clean agree over the same windows, special-token
    inputs left out by both (the rotary facts compare the twin's loss with the absolute model's this way)."""
    w = windows(tiny_model)
    sums = PC.splice_position_sums(tiny_model, identity_sae(6), w, progress=False)
    pooled = float(sums.totals["ce:clean"].sum() / sums.n.sum())
    assert abs(PC._mean_loss(tiny_model, w) - pooled) < 1e-9
    with torch.no_grad():
        everything = float(PC.next_token_ce(tiny_model(w[:, :-1]), w[:, 1:]).mean())
    assert abs(everything - pooled) > 1e-6  # the BOS inputs are really left out


def test_an_exact_sae_costs_nothing_and_a_zero_sae_costs_its_splice(tiny_model):
    model = tiny_model
    w = windows(model)
    sums = PC.splice_position_sums(model, identity_sae(6), w, progress=False)
    assert PC.loss_methods(sums) == [SAE_LABEL]
    assert float(sums.totals[f"sse:{SAE_LABEL}"].abs().max()) < 1e-20
    assert float((sums.totals[f"ce:{SAE_LABEL}"] - sums.totals["ce:clean"]).abs().max()) < 1e-9
    loss = PC.loss_summary(sums, SAE_LABEL, 4)
    assert abs(loss.in_context) < 1e-12 and abs(loss.past) < 1e-12
    # BOS at position 0 is left out: no input is counted there
    assert sums.n[0] == 0 and int(sums.n[1:].sum()) == 6 * 9
    zero = PC.splice_position_sums(model, zero_sae(6), w, progress=False)
    tok, tgt = w[:, :-1], w[:, 1:]
    expected = PC.next_token_ce(model(torch.zeros(*tok.shape, 6, dtype=torch.float64), start_at_layer=0, tokens=tok), tgt)
    got = zero.totals[f"ce:{SAE_LABEL}"][1:] / zero.n[1:]
    torch.testing.assert_close(got, expected[:, 1:].mean(0))


def test_finetuned_saes_are_spliced_beside_the_sae(tiny_model):
    model = tiny_model
    sums = PC.splice_position_sums(model, zero_sae(6), windows(model), finetuned={"fine-tuned 1k": identity_sae(6)},
                                   progress=False)
    assert PC.loss_methods(sums) == [SAE_LABEL, "fine-tuned 1k"]
    assert PC.loss_summary(sums, "fine-tuned 1k", 4).past == pytest.approx(0, abs=1e-12)
    assert abs(PC.loss_summary(sums, SAE_LABEL, 4).past) > 1e-3  # a random model: zeroing moves the loss either way


def test_loss_summary_and_curves_hand_worked():
    sums = PositionSums.empty(4)
    # positions 1, 2 inside a context of 3, position 3 past it; two inputs at position 3
    sums.add(torch.tensor([1, 2, 3, 3]), **{"ce:clean": torch.tensor([1.0, 2.0, 3.0, 5.0]),
                                            "ce:SAE": torch.tensor([1.5, 2.5, 4.0, 8.0])})
    s = PC.loss_summary(sums, "SAE", 3)
    assert s.in_context == pytest.approx(0.5) and s.past == pytest.approx(2.0)
    curves = PC.loss_curves(sums)
    assert list(curves.position) == [1, 2, 3]
    assert list(curves.delta_loss) == pytest.approx([0.5, 0.5, 2.0])
    assert list(curves.clean_loss) == pytest.approx([1.0, 2.0, 4.0])


def test_layer_errors_of_exact_and_zero_saes_at_a_later_layer(tiny_model):
    model = tiny_model
    tokens = windows(model)[:, :-1]
    rows, curves = PC.layer_errors(model, "m", {"exact": identity_sae(6, resid_pre(1)),
                                                "zero": zero_sae(6, resid_pre(1))}, tokens)
    exact, zero = rows
    assert (exact.layer, exact.context_size) == (1, 4)
    assert exact.summary.nmse_in < 1e-20 and exact.summary.nmse_past < 1e-20
    _, cache = model.run_with_cache(tokens, names_filter=resid_pre(1))
    x = cache[resid_pre(1)]
    inside = x[:, 1:4].reshape(-1, 6)
    var = inside.var(0, unbiased=False).sum()
    assert zero.summary.nmse_in == pytest.approx(float(inside.pow(2).sum(-1).mean() / var))
    assert zero.summary.nmse_past == pytest.approx(float(x[:, 4:].pow(2).sum(-1).mean() / var))
    assert set(curves.sae_id) == {"exact", "zero"} and set(curves.layer) == {1}
    # SAEs at several layers share one forward pass and get what each gets alone
    saes = {"a": zero_sae(6, resid_pre(0)), "b": zero_sae(6, resid_pre(1)), "c": identity_sae(6, resid_pre(1))}
    together = PC.layer_position_sums(model, saes, tokens, batch_size=2)
    for label, sae in saes.items():
        alone = PC.layer_position_sums(model, {label: sae}, tokens)[label]
        for name, total in alone.totals.items():
            torch.testing.assert_close(together[label].totals[name], total)
    assert not torch.allclose(together["a"].totals["x2"], together["b"].totals["x2"])  # each its own hook's input
    with pytest.raises(ValueError, match="nothing lies past"):
        PC.layer_errors(model, "m", {"full": identity_sae(6, resid_pre(1), context_size=10)}, tokens)


def e(nmse_in, nmse_past):
    return ErrorSummary(nmse_in, nmse_past, nmse_in, nmse_past)


def test_sentences_follow_the_numbers():
    big = PC.LossSummary(0.4, 6.4)
    assert "16.0 times as much past the context" in PC.loss_sentence(big, 64, 256)
    assert "no more than inside" in PC.loss_sentence(PC.LossSummary(0.4, 0.5), 64, 256)
    losses = {SAE_LABEL: big, FIX_LABELS["a"]: PC.LossSummary(7.7, 7.9), FIX_LABELS["b"]: PC.LossSummary(0.4, 0.38)}
    assert PC.best_fix_sentence(losses).startswith(f"Of the fixes, {FIX_LABELS['b']} costs the least")
    assert PC.best_fix_sentence({SAE_LABEL: big, FIX_LABELS["a"]: PC.LossSummary(7.7, 7.9)}).startswith("No fix")
    errors = {SAE_LABEL: e(0.08, 13000), FIX_LABELS["a"]: e(1700, 1700), FIX_LABELS["b"]: e(0.08, 0.07)}
    s = PC.ranking_sentence(errors, losses)
    assert "differs" in s and "-0.50" not in s and f"{SAE_LABEL}, {FIX_LABELS['a']} change places" in s
    same = {SAE_LABEL: e(0.08, 13000), FIX_LABELS["a"]: e(1700, 20000), FIX_LABELS["b"]: e(0.08, 0.07)}
    assert "rank the same" in PC.ranking_sentence(same, losses)


def test_finetune_frame_and_sentence():
    errors = {SAE_LABEL: e(0.08, 13000), "fine-tuned 100k": e(0.1, 0.15), "fine-tuned 25k": e(0.09, 600),
              CONTROL_LABEL: e(0.09, 0.08)}
    frame = PC.finetune_frame(errors, {"fine-tuned 100k": 100_000, "fine-tuned 25k": 25_000})
    assert list(frame.tokens) == [0, 25_000, 100_000] and list(frame.nmse_past) == [13000, 600, 0.15]
    s = PC.finetune_sentence(frame, errors[CONTROL_LABEL], 64)
    # the break, judged as the ledger does: past (0.15) over the fine-tuned SAE's own inside (0.1); fidelity: 0.1 / 0.08
    assert s.startswith("After 100,000 tokens") and "its error is 1.5 times its own inside, so the break is removed" in s
    assert "inside it is 1.25 times the SAE's before fine-tuning (fidelity kept within 1.1 times: no)" in s
    assert "positions 64" in s
    assert "falls from 13,000 to 0.15" in s and "inside it rises from 0.08 to 0.1" in s and "L0" not in s
    with_l0 = PC.finetune_frame(errors, {"fine-tuned 100k": 100_000}, {SAE_LABEL: (13.2, 40.0),
                                                                        "fine-tuned 100k": (9.04, 9.0)})
    assert "inside the context falls from 13.2 to 9.0, and past it falls from 40.0 to 9.0" in \
        PC.finetune_sentence(with_l0, None, 64)
    assert list(PC.finetune_table(with_l0, 64, 256).columns) == ["nMSE, 1–63", "nMSE, 64–255", "L0, 1–63", "L0, 64–255"]
    assert PC.moves(1.0, 1.0) == "stays at 1"
    frame2 = PC.finetune_frame(errors, {"fine-tuned 25k": 25_000})
    assert "6,667 times its own inside, so the break is not removed" in PC.finetune_sentence(frame2, None, 64)
    assert "not measured" in PC.finetune_sentence(PC.finetune_frame(errors, {}), None, 64)


def test_rotary_sentence_both_ways():
    def row(model, layer, i, p):
        return PC.LayerErrors(model, layer, f"L{layer}", 64, e(i, p))

    ab = [row(PC.ABSOLUTE_LABEL, 0, 0.08, 13000), row(PC.ABSOLUTE_LABEL, 1, 0.1, 5.0),
          row(PC.ABSOLUTE_LABEL, 2, 0.2, 0.25)]
    rot = [row(PC.ROTARY_LABEL, 0, 0.1, 0.19), row(PC.ROTARY_LABEL, 1, 0.1, 0.12), row(PC.ROTARY_LABEL, 2, 0.1, 0.15)]
    s = PC.rotary_sentence(ab + rot)
    assert "learned absolute 162,500 (layer 0), 50 (layer 1), 1.25 (layer 2); rotary twin 1.9 (layer 0)" in s
    assert s.endswith("None of the rotary twin's SAEs goes above 2 times, while the learned-absolute model's do at "
                      "layers 0 and 1 (not at layer 2).")
    up = PC.rotary_sentence(ab + rot + [row(PC.ROTARY_LABEL, 3, 0.1, 0.5)])
    assert up.endswith("also degrade past their context (more than 2 times) at layer 3.")
    assert PC.rotary_sentence(ab[2:] + rot).endswith("and neither do the learned-absolute model's: the control shows "
                                                     "no difference.")
    assert "not run" in PC.rotary_sentence([])
    table = PC.rotary_table(ab + rot, 256)
    assert table.shape[1] <= 7 and list(table["past / inside"])[:2] == ["162,500", "50"]


def test_result_glues_the_ledgers_names():
    errors = {SAE_LABEL: e(0.08, 13000), **{FIX_LABELS[k]: e(0.08, 0.1) for k in "abc"},
              CONTROL_LABEL: e(0.09, 0.08), "fine-tuned 25k": e(0.09, 6.0)}
    losses = {m: PC.LossSummary(0.4, 0.5) for m in errors}
    rows = [PC.LayerErrors(PC.ABSOLUTE_LABEL, 1, "relu-L1", 64, e(0.1, 5.0)),
            PC.LayerErrors(PC.ROTARY_LABEL, 0, "relu-L0", 64, e(0.1, 0.1)),
            PC.LayerErrors(PC.ROTARY_LABEL, 1, "relu-L1", 64, e(0.1, 0.13))]
    r = PC.PastContextResult(64, 256, 100, errors, losses, {"inside": 3.8, "past": 3.6}, pd.DataFrame(),
                             pd.DataFrame(), PC.finetune_frame(errors, {"fine-tuned 25k": 25_000}), CONTROL_LABEL,
                             layer_rows=rows, rotary_facts={"recipe": "cpu", "tokens": 10, "absolute_tokens": 10,
                                                            "matched": True, "loss": 4.0, "absolute_loss": 3.5})
    v = r.glued()
    for name in ("pc_context", "pc_n_ctx", "pc_loss_sae_in", "pc_loss_sae_past", "pc_ft_tokens_final",
                 "pc_ft_nmse_past_final", "pc_ft_nmse_in_final", "pc_sae_nmse_past", "pc_sae_nmse_in",
                 "pc_full_nmse_past", "pc_rot_ratio_max", "pc_abs_ratio_later_max", "pc_rot_recipe",
                 *(f"pc_loss_{k}_past" for k in "abcd")):
        assert name in v, name
    assert v["pc_rot_ratio_max"] == pytest.approx(1.3)  # layer 0's ratio (1.0) is not among layers 1..
    assert v["pc_abs_ratio_later_max"] == pytest.approx(50) and v["pc_ft_tokens_final"] == 25_000
    assert r.control_nmse_past == 0.08


def test_resumable_sae_computes_the_same_function(organism_model_and_sae):
    """Continuing an SAE unfolds sae_lens's input scaling: on s * x it gives s times the saved SAE's output on x."""
    from possae.organism.recipe import ARTIFACTS, finetune_saes
    from possae.organism.saes import resumable_sae

    model, sae = organism_model_and_sae
    r = finetune_saes()[0]
    tokens = torch.randint(300, 2000, (4, 32))
    tokens[:, 0] = model.tokenizer.bos_token_id
    t = resumable_sae(r, ARTIFACTS / "saes" / "relu-short", model, {"tokens": tokens})
    _, cache = model.run_with_cache(tokens, names_filter=resid_pre(0))
    x = cache[resid_pre(0)].reshape(-1, model.cfg.d_model)
    scale = model.cfg.d_model ** 0.5 / float(x.norm(dim=-1).mean())
    torch.testing.assert_close(t.decode(t.encode(scale * x)) / scale, sae.decode(sae.encode(x)), rtol=1e-4, atol=1e-4)
    assert t.cfg.normalize_activations == "expected_average_only_in" and t.cfg.l1_coefficient == r.l1_coefficient
    with pytest.raises(FileNotFoundError, match="not trained yet"):
        resumable_sae(r, ARTIFACTS / "saes" / "nowhere", model, {"tokens": tokens})


def test_rotary_twin_recipe_has_no_wpos_and_round_trips(tmp_path):
    import dataclasses

    from possae.organism.lm import build_model, lm_config, load_saved_model, save_model
    from possae.organism.recipe import LMRecipe, twin_dirs

    tiny = LMRecipe(d_vocab=50, d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_ctx=8, batch_size=3,
                    positional_embedding_type="rotary")
    torch.manual_seed(0)
    model = build_model(lm_config(tiny))
    assert model.cfg.positional_embedding_type == "rotary" and model.cfg.rotary_dim == 8
    assert not any("W_pos" in n for n, _ in model.named_parameters())
    folder = save_model(model, tmp_path)
    back = load_saved_model(folder)
    tokens = torch.randint(0, 50, (2, 8))
    torch.testing.assert_close(back(tokens), model.half().float()(tokens), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="positional_embedding_type"):
        LMRecipe(positional_embedding_type="alibi")
    with pytest.raises(ValueError, match="no W_pos"):
        dataclasses.replace(tiny, trainable="last_wpos_row")
    with pytest.raises(ValueError, match="standard, rotary"):
        twin_dirs("alibi")


def test_rotary_facts_say_whether_the_twin_is_budget_matched():
    from possae.sae_files import GPT2POS, GPT2POS_ROTARY, ORGANISM, ROTARY

    first = PC.rotary_facts(ROTARY, ORGANISM)  # the first organism's twin: the CPU recipe, the organism the GPU one
    assert first == {"recipe": "cpu", "tokens": 10_500_000, "absolute_tokens": 180_000_000, "matched": False}
    twin = PC.rotary_facts(GPT2POS_ROTARY, GPT2POS)  # the GPT-2-geometry organism's twin: its own recipe and tokens
    assert twin == {"recipe": "cpu", "tokens": 4_000_000, "absolute_tokens": 4_000_000, "matched": True}
    text = PC.rotary_setup_sentence({**twin, "loss": 4.1, "absolute_loss": 4.0})
    assert "budget-matched" in text and "not budget-matched" not in text and "4.100 nats" in text
    text = PC.rotary_setup_sentence({**first, "loss": 4.02, "absolute_loss": 3.63})
    assert "not budget-matched" in text and "10,500,000" in text and "180,000,000" in text


def test_loaders_know_the_rotary_twin_and_name_its_ids():
    from possae.loaders import ROTARY, expected_model, load_sae

    with pytest.raises(ValueError, match="Unknown organism-rotary SAE id 'relu-short'"):
        load_sae(ROTARY, "relu-short")
    assert expected_model(ROTARY, "relu-L1") == (ROTARY, {})

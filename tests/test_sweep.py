"""The fine-tuning sweep's measures and choice (possae.organism.sweep) on constructed sums, and its record's reading."""

import json

import pandas as pd
import pytest
import torch

from possae.length import SAE_LABEL
from possae.metrics import PositionSums
from possae.organism.recipe import SAERecipe, finetune_sweep_saes, sweep_id
from possae.organism.sweep import nearness, sweep_rows
from possae.past_context import CLEAN, sweep_sentence, sweep_table
from possae.sae_files import SWEEP_FILE, read_sweep

C, N_POS = 4, 8  # context 4 (positions 1..3 inside), 8 positions
SSE = {SAE_LABEL: (0.1, 100.0), "ft-a": (0.2, 0.3), "ft-b": (0.105, 0.2)}  # per input: (inside, past)
CE = {CLEAN: 1.0, SAE_LABEL: 1.5, "ft-a": 1.2, "ft-b": 1.1}


def constructed_sums() -> PositionSums:
    """Two inputs per position, x = +1 and -1 (total variance 1 everywhere), with the SSE and CE above."""
    sums = PositionSums.empty(N_POS)
    pos = torch.arange(N_POS).repeat_interleave(2)
    x = torch.tensor([1.0, -1.0]).repeat(N_POS)[:, None]
    inside = pos < C
    sse = {f"sse:{k}": torch.where(inside, a, b).double() for k, (a, b) in SSE.items()}
    ce = {f"ce:{k}": torch.full((len(pos),), v, dtype=torch.float64) for k, v in CE.items()}
    return sums.add(pos, x=x, x2=(x**2).sum(1), **sse, **ce)


RECIPES = {"ft-a": SAERecipe("ft-a", lr=3e-4, warm_up_share=0.05, training_tokens=400_000),
           "ft-b": SAERecipe("ft-b", lr=1e-4, warm_up_share=0.5, training_tokens=400_000)}


def test_nearness_is_the_larger_figure_over_its_limit():
    assert nearness(1.0, 0.55) == pytest.approx(0.5)
    assert nearness(4.0, 1.1) == pytest.approx(2.0)
    assert nearness(2.0, 1.1) == pytest.approx(1.0)  # on both limits: passes


def test_sweep_rows_measure_and_order_the_recipes():
    rows = sweep_rows(constructed_sums(), RECIPES, C)
    assert list(rows["sae_id"]) == ["ft-b", "ft-a"] and list(rows["passes_both"]) == [True, False]
    b, a = rows.iloc[0], rows.iloc[1]
    assert b.nmse_in == pytest.approx(0.105) and b.nmse_past == pytest.approx(0.2)
    assert b.break_ratio == pytest.approx(0.2 / 0.105) and b.fidelity_ratio == pytest.approx(1.05)
    assert a.fidelity_ratio == pytest.approx(2.0) and a.nearness == pytest.approx(2.0 / 1.1)
    assert b.dce_in == pytest.approx(0.1) and a.dce_past == pytest.approx(0.2)
    assert (b.lr, b.warm_up_share, b.tokens) == (1e-4, 0.5, 400_000)


def record_of(rows: pd.DataFrame) -> dict:
    rows = rows.assign(dead_share=[0.25, 0.0])
    return {"context_size": C, "n_ctx": N_POS, "n_heldout_tokens": 2048, "heldout_inputs": 16, "sae_dead_share": 0.05,
            "restore_factor": 2.0, "same_band": 1.1, "rows": rows.to_dict(orient="records"), "best": rows.iloc[0].sae_id}


def test_the_sentence_and_table_follow_the_record():
    rows = sweep_rows(constructed_sums(), RECIPES, C)
    shipped = pd.DataFrame({"tokens": [0, 400_000], "nmse_in": [0.1, 0.105], "nmse_past": [100.0, 0.2]})
    s = sweep_sentence(record_of(rows), shipped)
    assert "1 of the 2 pass both verdicts" in s and "learning rate 0.0001 with warm-up over 50%" in s
    assert "with 25.0% of its latents silent on these windows against the SAE's 5.0%" in s
    assert "measures 0.105 inside and 0.2 past here, against the sweep's 0.105 and 0.2" in s
    table = sweep_table(record_of(rows))
    assert list(table["passes both"]) == ["yes", "no"] and list(table.iloc[:, -1]) == ["25.0%", "0.0%"]
    assert "None of the 2 passes both verdicts" in sweep_sentence(record_of(rows.assign(passes_both=False)), shipped)
    assert "No fine-tuning sweep is recorded" in sweep_sentence(None, shipped) and sweep_table(None).empty


def test_a_corrupt_record_names_the_command_that_rewrites_it(tmp_path):
    assert read_sweep(tmp_path) is None
    (tmp_path / SWEEP_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="possae organism sweep"):
        read_sweep(tmp_path)
    (tmp_path / SWEEP_FILE).write_text(json.dumps({"best": "x"}))
    assert read_sweep(tmp_path) == {"best": "x"}


def test_the_sweep_grid_covers_each_rate_and_warm_up_once():
    recipes = finetune_sweep_saes()
    ids = [r.sae_id for r in recipes]
    assert len(set(ids)) == len(ids) == 10 and sweep_id(1e-4, 0.5) == "relu-short-ft400k-lr1e-04-wu50"
    assert all(r.init_from == "relu-short" and r.context_size == 1024 for r in recipes)
    assert SAERecipe("x", training_tokens=400_000, batch_size_tokens=1024, warm_up_share=0.5).warm_up_steps == 195


def test_the_shipped_fine_tuned_saes_use_the_sweeps_best_recipe():
    from possae.organism.recipe import FINETUNE_BUDGETS, GPT2POS_ARTIFACTS, variant_saes

    record = read_sweep(GPT2POS_ARTIFACTS)
    best = record["rows"][0]
    assert best["sae_id"] == record["best"] and best["nearness"] == min(r["nearness"] for r in record["rows"])
    assert {r["sae_id"] for r in record["rows"]} == {r.sae_id for r in finetune_sweep_saes()}  # the whole grid
    shipped = [r for r in variant_saes("gpt2") if r.sae_id in FINETUNE_BUDGETS]
    assert len(shipped) == 3 and all((r.lr, r.warm_up_share) == (best["lr"], best["warm_up_share"]) for r in shipped)
    for r in shipped:  # and the shipped weights were trained with it
        stored = json.loads((GPT2POS_ARTIFACTS / "saes" / r.sae_id / "training.json").read_text())["recipe"]
        assert (stored["lr"], stored.get("warm_up_share")) == (best["lr"], best["warm_up_share"])

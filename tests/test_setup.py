"""The setup chapter's analyze: parameters, quality from sae_lens on the book's sample, W_pos geometry."""

from __future__ import annotations

import pytest
import torch

from possae.book import chapter_parameters
from possae.data_paths import REPO_ROOT
from possae.params import ParameterError
from possae.setup import GPT2_SAE_CONTEXT, SetupParams, analyze, quality_on_heldout
from possae.wpos import load_gpt2_wpos, wpos_geometry


def test_params_are_the_chapters_parameters_and_refuse_bad_values():
    """SetupParams's fields are exactly the parameters cell's names; unknown or ill-typed values raise."""
    assert set(SetupParams.names()) == chapter_parameters(REPO_ROOT / "chapters" / "setup.py")
    with pytest.raises(ParameterError, match="no parameter 'sae'.*valid parameters: model_name"):
        SetupParams.from_mapping({"sae": "relu-short"})
    with pytest.raises(ParameterError, match="'n_heldout_tokens' must be int"):
        SetupParams.from_mapping({"n_heldout_tokens": "many"})


@pytest.fixture(scope="module")
def result(organism_model_and_sae):
    model, sae = organism_model_and_sae
    return analyze(model, sae, SetupParams(n_heldout_tokens=512))


def test_result_numbers_are_the_definitions(result, organism_model_and_sae):
    """Glued geometry equals wpos_geometry on the rows named; quality is quality_on_heldout's; the card is the organism's."""
    model, sae = organism_model_and_sae
    g = result.glued()
    W = model.W_pos.detach().cpu()
    assert g["top3"] == pytest.approx(wpos_geometry(W, 1, model.cfg.n_ctx)["top3_share"])
    assert g["gpt2_top3_ctx"] == pytest.approx(wpos_geometry(load_gpt2_wpos(), 1, GPT2_SAE_CONTEXT)["top3_share"])
    assert g["setup_context"] == 64 and g["gpt2_context_last"] == 127
    assert g["explained_variance"] == pytest.approx(quality_on_heldout(model, sae, 512)["explained_variance"])
    assert 0.5 < g["explained_variance"] < 1 and g["ce_clean"] < g["ce_spliced"]
    assert torch.equal(result.W_pos, W)
    assert len(result.card_items()) == 4 and "training data" in g["card_sentence"]
    assert list(result.quality_table().index)[:2] == ["L0", "explained variance"]


def test_no_card_off_the_organism(result):
    """A model that is not the organism shows no card, and the sentence says so."""
    from dataclasses import replace

    other = replace(result, card=None)
    assert other.card_items() == [] and "is not the organism" in other.card_sentence()

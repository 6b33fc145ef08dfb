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


def test_position_cosine_heatmap_keeps_every_row_up_to_512_then_strides():
    """The organism's heatmap holds every row pair; GPT-2's 1023 rows are shown every 2nd (a page of 1.5 MB, not 20)."""
    import numpy as np

    from possae.figures.setup import position_cosine_figure
    from possae.wpos import position_cosine_matrix

    W = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    small = position_cosine_figure(W).data[0]
    assert np.allclose(np.asarray(small.z), position_cosine_matrix(W[1:]).numpy()) and list(small.x) == list(range(1, 256))
    big = position_cosine_figure(torch.randn(1024, 16, generator=torch.Generator().manual_seed(0)))
    z = np.asarray(big.data[0].z)
    assert z.shape == (512, 512) and list(big.data[0].x[:3]) == [1, 3, 5] and "every 2nd" in big.layout.title.text

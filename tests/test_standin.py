"""The stand-in hub cache: gpt2-small and its jb SAEs load by name through the real from_pretrained paths, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from possae.standin import REVISION, gpt2_state_dict, jb_sae_cfg, snapshot


def test_snapshot_layout_is_what_huggingface_hub_reads(tmp_path):
    """models--ORG--NAME/snapshots/<40 hex>/ and refs/main holding that commit with no trailing newline."""
    folder = snapshot(tmp_path, "jbloom/GPT2-Small-SAEs-Reformatted")
    assert folder == tmp_path / "models--jbloom--GPT2-Small-SAEs-Reformatted" / "snapshots" / REVISION
    assert len(REVISION) == 40 and int(REVISION, 16) >= 0
    assert (folder.parent.parent / "refs" / "main").read_bytes() == REVISION.encode()


def test_state_dict_has_gpt2_small_shapes_and_the_given_w_pos():
    """GPT-2's own key names in Conv1D orientation, 124M parameters, W_pos copied exactly."""
    W_pos = torch.randn(1024, 768)
    state = gpt2_state_dict(W_pos)
    assert state["wte.weight"].shape == (50257, 768) and torch.equal(state["wpe.weight"], W_pos)
    assert state["h.11.attn.c_attn.weight"].shape == (768, 2304) and state["h.0.mlp.c_fc.weight"].shape == (768, 3072)
    assert sum(v.numel() for v in state.values()) == 124_439_808
    cfg = jb_sae_cfg("blocks.5.hook_resid_pre")
    assert (cfg["hook_point"], cfg["hook_point_layer"], cfg["d_sae"], cfg["context_size"]) == (
        "blocks.5.hook_resid_pre", 5, 24576, 128)


@pytest.mark.slow
def test_gpt2_profile_loads_by_name_from_the_standin_cache(tmp_path):
    """With HF_HUB_OFFLINE=1 and HF_HUB_CACHE at the stand-in, load_model_and_sae('gpt2-small-res-jb', ...) works."""
    from possae.data_paths import data_dir

    data = data_dir(os.environ.get("POSSAE_STANDIN_DATA") or Path(__file__).parents[2] / "shared" / "data")
    if not (data / "gpt2-small" / "encoder.json").is_file():
        pytest.skip(f"GPT-2's tokenizer files are not in {data / 'gpt2-small'} (set POSSAE_STANDIN_DATA)")
    from possae.book import profile_saes
    from possae.standin import write_standin_cache

    cache = write_standin_cache(tmp_path / "hub", data, profile_saes("gpt2"))
    code = ("import json, torch; from possae.loaders import load_model_and_sae; from possae.wpos import load_gpt2_wpos;"
            "m, s = load_model_and_sae('gpt2-small-res-jb', 'blocks.0.hook_resid_pre', device='cpu');"
            "W = load_gpt2_wpos(); ok = torch.allclose(m.W_pos, W - W.mean(-1, keepdim=True), atol=1e-5);"
            "print(json.dumps([m.cfg.n_layers, m.cfg.n_ctx, s.cfg.d_sae, s.cfg.metadata.context_size, ok,"
            " m.to_tokens('Hello world').tolist()]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [12, 1024, 24576, 128, True, [[50256, 15496, 995]]]


def test_pages_built_from_the_standin_cache_carry_the_banner(tmp_path, monkeypatch):
    """With the stand-in's marker in $HF_HUB_CACHE, executed chapters and markdown pages get the warning banner."""
    import nbformat

    from possae.book import execute_chapter, with_banner
    from possae.standin import BANNER, MARKER, standin_active

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert not standin_active() and with_banner("# Title\n\ntext\n") == "# Title\n\ntext\n"
    chapter = tmp_path / "tiny.py"
    chapter.write_text('# %% [markdown]\n# # Tiny\n\n# %% tags=["parameters"]\nx = 1\n\n# %%\nx + 1\n')
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / MARKER).write_text("{}")
    assert standin_active()
    assert with_banner("# Title\n\ntext\n").startswith("# Title\n\n```{warning}\n**Stand-in weights.**")
    nb = nbformat.read(execute_chapter(chapter, tmp_path / "tiny.ipynb", {"x": 2}), as_version=4)
    assert nb.cells[0].source.startswith("# Tiny") and BANNER in nb.cells[1].source
    assert nb.cells[-1].outputs[0]["data"]["text/plain"] == "3"


def test_standin_sae_is_not_the_matching_chapters_random_baseline(tmp_path):
    """The stand-in's decoders differ from possae.matching.random_directions (seed 0), which a page compares them to."""
    from sae_lens import SAE

    from possae.matching import random_directions
    from possae.standin import SAE_B_ENC, write_sae

    sae = SAE.load_from_disk(write_sae(tmp_path, "gpt2-small-res-jb", "blocks.0.hook_resid_pre"))
    base = random_directions(sae.cfg.d_sae, sae.cfg.d_in, seed=0)
    assert float((sae.W_dec * base).sum(-1).abs().max()) < 0.5 and float(sae.b_enc.max()) == pytest.approx(SAE_B_ENC)
    assert sae.cfg.metadata.context_size == 128 and sae.cfg.metadata.hook_name == "blocks.0.hook_resid_pre"

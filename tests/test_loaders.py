import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from possae.loaders import (
    HubUnreachableError,
    check_sae_fits,
    expected_model,
    load_model,
    load_model_and_sae,
    load_sae,
    organism_sae_ids,
)
from possae.organism.card import read_model_card

LAYER0_IDS = {"relu-short", "relu-full", "relu-short-8x", "relu-short-16x", "relu-short-64x"}


def _tiny_model(d_model=16, n_layers=2):
    cfg = HookedTransformerConfig(d_model=d_model, d_head=8, n_heads=2, d_mlp=32, n_layers=n_layers, n_ctx=16,
                                  d_vocab=50, act_fn="gelu_new", normalization_type="LN", model_name="tiny")
    return HookedTransformer(cfg)


def _sae(d_in, hook, cls=StandardSAE, cfg_cls=StandardSAEConfig, **kw):
    sae = cls(cfg_cls(d_in=d_in, d_sae=4 * d_in, **kw))
    sae.cfg.metadata.hook_name = hook
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    return sae


# ---------------------------------------------------------------- the organism (offline default)


def test_organism_model_loads_with_documented_shapes():
    model = load_model("organism", device="cpu")
    card = read_model_card()
    assert model.cfg.n_layers == card["architecture"]["n_layers"] >= 4
    assert model.cfg.d_model >= 128 and model.cfg.n_ctx >= 256
    assert model.cfg.positional_embedding_type == "standard" and model.cfg.normalization_type == "LN"
    tokens = model.to_tokens("Once upon a time, there was a little robot.")
    assert tokens[0, 0].item() == model.tokenizer.bos_token_id
    logits = model(tokens)
    assert logits.shape == (1, tokens.shape[1], model.cfg.d_vocab) and torch.isfinite(logits).all()
    assert model.W_pos.dtype == torch.float32


def test_organism_beats_unigram_on_every_held_out_corpus():
    for row in read_model_card()["heldout"]:
        assert row["loss"] < 0.8 * row["unigram_loss"], row


def test_organism_saes_load_and_fit_the_model():
    assert LAYER0_IDS <= set(organism_sae_ids())
    model = load_model("organism", device="cpu")
    x = model.W_E[:5] + model.W_pos[:5]
    for sae_id in sorted(LAYER0_IDS):
        model_, sae = load_model_and_sae("organism", sae_id, device="cpu", model=model)
        assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_pre"
        assert sae.W_enc.dtype == torch.float32 and sae.cfg.d_in == model.cfg.d_model
        f = sae.encode(x)
        assert f.shape == (5, sae.cfg.d_sae) and torch.isfinite(f).all() and (f >= 0).all()
    assert load_sae("organism", "relu-short").cfg.metadata.context_size == model.cfg.n_ctx // 4
    assert load_sae("organism", "relu-full").cfg.metadata.context_size == model.cfg.n_ctx
    assert load_sae("organism", "relu-short-64x").cfg.d_sae == 64 * model.cfg.d_model


def test_organism_card_reports_every_sae():
    saes = read_model_card()["saes"]
    assert LAYER0_IDS <= set(saes)
    for sae_id, s in saes.items():
        h = s["heldout"]
        assert 0 < h["l0"] < s["d_sae"] and 0 < h["explained_variance"] <= 1 and 0 <= h["dead_share"] < 1, sae_id


# ---------------------------------------------------------------- local folders


def test_local_sae_folder_round_trip_gives_identical_encodings(tmp_path):
    model = _tiny_model()
    for cls, cfg_cls, kw in ((StandardSAE, StandardSAEConfig, {}), (TopKSAE, TopKSAEConfig, {"k": 3})):
        sae = _sae(16, "blocks.0.hook_resid_pre", cls, cfg_cls, **kw)
        folder = tmp_path / cls.__name__
        sae.save_model(folder)
        loaded = load_sae(str(folder), device="cpu")
        assert type(loaded) is cls
        check_sae_fits(model, loaded)
        x = torch.randn(7, 16)
        assert torch.equal(loaded.encode(x), sae.encode(x))
    again = load_sae(str(tmp_path), "StandardSAE", device="cpu")
    assert isinstance(again, StandardSAE)
    with pytest.raises(FileNotFoundError, match="SAE folders in .*StandardSAE"):
        load_sae(str(tmp_path), "nope")


def test_hugging_face_model_folder_matches_hf_logits(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32, vocab_size=64)).eval()
    hf.save_pretrained(tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        ref = hf(tokens).logits.log_softmax(-1)
        ours = model(tokens).log_softmax(-1)
    assert torch.allclose(ours, ref, atol=1e-4)


def test_possae_model_folder_loads_by_path():
    from possae.organism.recipe import ARTIFACTS

    model = load_model(str(ARTIFACTS / "model"), device="cpu")
    ref = load_model("organism", device="cpu")
    tokens = ref.to_tokens("The King James Bible")
    assert torch.equal(model(tokens), ref(tokens))


# ---------------------------------------------------------------- bad input


def test_hub_sae_fails_fast_and_names_the_offline_alternative():
    with pytest.raises(HubUnreachableError) as e:
        load_sae("gpt2-small-res-jb", "blocks.0.hook_resid_pre", device="cpu")
    msg = str(e.value)
    assert "gpt2-small-res-jb" in msg and "unreachable" in msg and "load_sae('organism'" in msg


def test_hub_model_fails_fast_and_names_the_offline_alternative():
    with pytest.raises(HubUnreachableError, match=r"model 'gpt2'.*unreachable.*load_model\('organism'\)"):
        load_model("gpt2-small", device="cpu")


def test_unknown_release_and_ids_list_valid_choices():
    with pytest.raises(ValueError, match="Unknown SAE release 'gpt2-small-res-nope'.*gpt2-small-res-jb"):
        load_sae("gpt2-small-res-nope", "blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match="Unknown sae_id 'blocks.99.hook_resid_pre'.*blocks.0.hook_resid_pre"):
        load_sae("gpt2-small-res-jb", "blocks.99.hook_resid_pre")
    with pytest.raises(ValueError, match="Unknown organism SAE id 'relu-huge'.*relu-short"):
        load_sae("organism", "relu-huge")
    with pytest.raises(ValueError, match="Unknown model 'not-a-model'"):
        load_model("not-a-model")


def test_registry_records_the_weight_processing_of_jb_saes():
    name, kwargs = expected_model("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
    assert name == "gpt2-small" and kwargs == {"center_writing_weights": True}


def test_mismatched_sae_and_model_raise():
    model = _tiny_model(d_model=16, n_layers=2)
    with pytest.raises(ValueError, match="d_in 24 does not match the width 16"):
        check_sae_fits(model, _sae(24, "blocks.0.hook_resid_pre"))
    with pytest.raises(ValueError, match="'blocks.5.hook_resid_pre' does not exist"):
        check_sae_fits(model, _sae(16, "blocks.5.hook_resid_pre"))
    check_sae_fits(model, _sae(32, "blocks.1.mlp.hook_post"))  # d_mlp wide hooks fit


def test_layer0_chapters_refuse_other_hooks():
    from possae.hooks import require_layer0

    require_layer0(_sae(16, "blocks.0.hook_resid_pre"))
    with pytest.raises(ValueError, match=r"positional chapter studies layer-0 SAEs.*reads 'blocks.1.hook_resid_pre'.*relu-short"):
        require_layer0(_sae(16, "blocks.1.hook_resid_pre"), "The positional chapter")


def test_layer0_input_is_transformer_lens_name_for_it():
    """possae.hooks spells the layer-0 hook out (so that importing it needs no transformer_lens); it is TL's name."""
    from transformer_lens.utilities import get_act_name

    from possae.hooks import LAYER0_INPUT, act_name

    assert LAYER0_INPUT == get_act_name("resid_pre", 0) == act_name("resid_pre", 0)


def test_truncated_sae_weights_raise_a_possae_error_naming_the_file(tmp_path):
    """A cut-off sae_weights.safetensors raises CorruptFileError naming the file, not a raw SafetensorError."""
    import shutil

    from possae.loaders import ARTIFACTS, CorruptFileError, load_sae

    folder = tmp_path / "relu-short"
    shutil.copytree(ARTIFACTS / "saes" / "relu-short", folder)
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match=r"sae_weights\.safetensors is truncated or corrupt.*save the SAE there again"):
        load_sae(str(tmp_path), "relu-short", device="cpu")
    (folder / "cfg.json").write_text('{"d_in": ')
    with pytest.raises(CorruptFileError, match=r"cfg\.json is truncated or corrupt"):
        load_sae(str(tmp_path), "relu-short", device="cpu")


def test_corrupt_organism_file_names_the_git_restore(monkeypatch, tmp_path):
    """A corrupt shipped organism SAE names `git checkout` of the artifacts and the rebuild command."""
    import shutil

    import possae.loaders as loaders

    art = tmp_path / "possae" / "artifacts" / "organism"
    shutil.copytree(loaders.ARTIFACTS / "saes" / "relu-short", art / "saes" / "relu-short")
    (art / "saes" / "relu-short" / "sae_weights.safetensors").write_bytes(b"\x05\x00")
    monkeypatch.setitem(loaders.ORGANISMS, "organism", art)
    with pytest.raises(loaders.CorruptFileError, match=r"git checkout -- possae/artifacts/organism.*possae organism saes"):
        loaders.load_sae("organism", "relu-short", device="cpu")


def test_hub_probe_follows_hf_endpoint(monkeypatch):
    """With $HF_ENDPOINT pointing at a mirror on 127.0.0.1 the probe reaches it; a closed port is unreachable."""
    import socket

    from possae.loaders import hub_address, hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_address() == ("127.0.0.1", port)
        assert hub_reachable(hub_address(), timeout=1.0)
    finally:
        server.close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    assert not hub_reachable(("127.0.0.1", free), timeout=0.5)
    monkeypatch.delenv("HF_ENDPOINT")
    assert hub_address() == ("huggingface.co", 443)
    hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub_reachable(("127.0.0.1", port), timeout=0.5)
    hub_reachable.cache_clear()


def test_every_sae_the_gpt2_profile_names_is_in_the_sae_lens_registry():
    """Each (release, id) of the gpt2 profile exists in the installed sae_lens's pretrained_saes.yaml."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from possae.book import profile_saes

    directory = get_pretrained_saes_directory()
    pairs = profile_saes("gpt2")
    assert ("gpt2-small-res-jb", "blocks.0.hook_resid_pre") in pairs and len(pairs) >= 12
    for release, sae_id in pairs:
        assert release in directory and sae_id in directory[release].saes_map, (release, sae_id)


def test_loading_an_sae_model_pair_does_not_emit_sae_lens_kwargs_warning(tmp_path):
    """The finding: sae_lens's 'non-empty model_from_pretrained_kwargs' UserWarning landed in the gpt2 notebooks' load
    cell. load_model_and_sae applies those kwargs, so it silences exactly that warning; load_sae alone still emits it."""
    import warnings

    from possae.loaders import load_model_and_sae, load_sae

    model = _tiny_model()
    sae = _sae(16, "blocks.0.hook_resid_pre")
    sae.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": False}
    sae.save_model(tmp_path / "sae")
    with warnings.catch_warnings(record=True) as alone:
        warnings.simplefilter("always")
        load_sae(str(tmp_path), "sae", device="cpu")
    assert any("non-empty model_from_pretrained_kwargs" in str(w.message) for w in alone)  # the fixture triggers it
    with warnings.catch_warnings(record=True) as paired:
        warnings.simplefilter("always")
        warnings.warn("an unrelated warning", UserWarning)
        _, loaded = load_model_and_sae(str(tmp_path), "sae", device="cpu", model=model)
    assert [str(w.message) for w in paired] == ["an unrelated warning"]  # only that one warning is filtered
    assert loaded.cfg.metadata.model_from_pretrained_kwargs == {"center_writing_weights": False}


def test_further_saes_of_a_loaded_model_load_quietly_and_are_checked_to_fit(tmp_path):
    """The finding: on the gpt2 stand-in, the oscillation and matching chapters loaded their other SAEs with load_sae,
    so sae_lens's kwargs warning reached the notebooks. load_sae_for silences exactly that warning and checks the fit."""
    import warnings

    from possae.loaders import load_sae_for

    model = _tiny_model()
    for name, d_in in (("fits", 16), ("wide", 24)):
        sae = _sae(d_in, "blocks.1.hook_resid_pre")
        sae.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": False}
        sae.save_model(tmp_path / name)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sae = load_sae_for(model, str(tmp_path), "fits", device="cpu")
    assert sae.cfg.d_in == 16 and not seen
    with pytest.raises(ValueError, match="d_in 24 does not match the width 16"):
        load_sae_for(model, str(tmp_path), "wide", device="cpu")


def test_hub_model_load_prints_nothing(monkeypatch, capsys):
    """transformer_lens's from_pretrained prints a line; an executed chapter must not show it."""
    from transformer_lens import HookedTransformer

    import possae.loaders as loaders

    def fake(name, device=None, **kwargs):
        print(f"Loaded pretrained model {name} into HookedTransformer")
        return name

    monkeypatch.setattr(HookedTransformer, "from_pretrained", staticmethod(fake))
    monkeypatch.setattr(loaders, "hub_reachable", lambda address=None, timeout=2.0: True)
    assert loaders.load_model("gpt2-small", device="cpu") == "gpt2"
    assert capsys.readouterr().out == ""

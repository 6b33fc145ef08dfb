"""A tiny end-to-end run of the organism recipe: tokenizer, a 2-layer model and one SAE on a small text sample."""

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sae_lens import SAE

from possae.loaders import check_sae_fits, load_sae
from possae.organism.data import build_token_streams, build_tokenizer, load_tokenizer
from possae.organism.lm import evaluate_lm, load_saved_model, train_language_model
from possae.organism.recipe import LMRecipe, SAERecipe
from possae.organism.saes import evaluate_sae, train_sae

SAMPLE = Path(__file__).parent / "data"  # 400 TinyStories, shipped for these tests (see tests/data/README.md)
CORPUS = ("tinystories",)
RECIPE = LMRecipe(d_vocab=512, d_model=32, n_layers=2, n_heads=2, d_mlp=128, n_ctx=64, train_tokens=8 * 64 * 200,
                  batch_size=8, warmup_steps=5, lr=3e-3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("organism")
    out, work = root / "out", root / "work"
    build_tokenizer(SAMPLE, vocab_size=RECIPE.d_vocab, out_dir=out, corpora=CORPUS)
    build_token_streams(SAMPLE, cache=work / "tokens", tokenizer_dir=out / "tokenizer", corpora=CORPUS)
    facts = train_language_model(RECIPE, out_dir=out, work_dir=work, corpora=CORPUS, compile=False, log_every=10,
                                 geometry_every=40, checkpoint_every=1000)
    return root, out, work, facts


def test_tokenizer_has_bos_and_requested_size(tiny):
    _, out, _, _ = tiny
    tok = load_tokenizer(out / "tokenizer")
    assert tok.get_vocab_size() == RECIPE.d_vocab and tok.token_to_id("<|endoftext|>") == 0
    assert tok.decode(tok.encode("Once upon a time").ids) == "Once upon a time"


def test_language_model_loss_falls_and_beats_unigram(tiny):
    _, out, work, facts = tiny
    losses = [h["loss"] for h in facts["history"]]
    assert losses[-1] < losses[0] - 1.0
    assert facts["tokens_seen"] == RECIPE.total_steps * RECIPE.batch_size * RECIPE.n_ctx
    model = load_saved_model(out / "model", out / "tokenizer")
    df = evaluate_lm(model, corpora=CORPUS, cache=work / "tokens")
    assert df.loc[0, "loss"] < df.loc[0, "unigram_loss"]
    assert "top3_share" in facts["history"][-1]


def test_interrupted_training_resumes_to_identical_weights(tiny, tmp_path):
    _, out, work, _ = tiny
    short = dataclasses.replace(RECIPE, train_tokens=8 * 64 * 12)
    kw = dict(corpora=CORPUS, compile=False, log_every=4, checkpoint_every=1000)
    (tmp_path / "tokens").symlink_to(work / "tokens")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "tokenizer").symlink_to(out / "tokenizer")
    straight = train_language_model(short, out_dir=tmp_path / "a", work_dir=tmp_path, **kw)
    (tmp_path / "lm_checkpoint.pt").unlink()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tokenizer").symlink_to(out / "tokenizer")
    assert train_language_model(short, out_dir=tmp_path / "b", work_dir=tmp_path, stop_at=5, **kw)["stopped_at"] == 5
    resumed = train_language_model(short, out_dir=tmp_path / "b", work_dir=tmp_path, **kw)
    a, b = load_file(tmp_path / "a" / "model" / "model.safetensors"), load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight["steps"] == resumed["steps"] == 12


def test_sae_trains_with_sae_lens_and_reloads(tiny):
    _, out, work, _ = tiny
    r = SAERecipe("tiny", expansion=4, context_size=16, training_tokens=16_384, batch_size_tokens=256,
                  l1_coefficient=1.0, lr=3e-3)
    facts = train_sae(r, device="cpu", out_dir=out, work_dir=work, corpora=CORPUS)
    folder = out / "saes" / "tiny"
    assert facts["sae_id"] == "tiny" and {p.name for p in folder.iterdir()} == {"cfg.json", "sae_weights.safetensors", "training.json"}
    assert all(v.dtype == torch.float16 for v in load_file(folder / "sae_weights.safetensors").values())
    sae = SAE.load_from_disk(folder)
    assert sae.cfg.architecture() == "standard" and sae.cfg.d_sae == 4 * RECIPE.d_model
    assert sae.W_enc.dtype == torch.float32 and sae.cfg.normalize_activations == "none"
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_pre" and sae.cfg.metadata.context_size == 16
    model = load_saved_model(out / "model", out / "tokenizer")
    check_sae_fits(model, sae)
    m = evaluate_sae(model, sae, 16, corpora=CORPUS, cache=work / "tokens")
    assert m["explained_variance"] > 0.5 and 0 < m["l0"] < sae.cfg.d_sae
    again = load_sae(str(folder), device="cpu")
    x = model.W_E[:9] + model.W_pos[:9]
    assert torch.equal(again.encode(x), sae.encode(x))


def test_seed_curve_trains_and_matches_each_budgets_pair_and_seeds_start_apart(tiny):
    """The seed curve's command on tiny budgets: each budget's pair is trained (the suite's own read where it lies),
    matched as the matching chapter matches, and recorded; init_seed sets the initial weights."""
    from possae.matching import curve_sentence, curve_table, dictionary_from_sae, match_pair
    from possae.organism.seed_curve import COMMAND, run_seed_curve
    from possae.sae_files import read_seed_curve

    root, out, work, _ = tiny
    base = SAERecipe("a", hook_name="blocks.1.hook_resid_pre", architecture="topk", k=4, expansion=4, context_size=16,
                     training_tokens=2048, batch_size_tokens=256, init_seed=1)
    b = dataclasses.replace(base, sae_id="b", seed=7, init_seed=2)
    for r in (base, b):  # the suite's own pair, at its own budget
        train_sae(r, device="cpu", out_dir=out, work_dir=work, corpora=CORPUS)
    v = dataclasses.replace
    budgets = ((1024, v(base, sae_id="a-1k", training_tokens=1024), v(b, sae_id="b-1k", training_tokens=1024)),
               (2048, base, b))
    path = run_seed_curve(out_dir=out, work_dir=work, budgets=budgets, suite={"a", "b"}, corpora=CORPUS)
    record = read_seed_curve(out)
    assert path == out / "seed_curve.json" and record["command"] == COMMAND and record["shipped_tokens"] == 2048
    assert [r["tokens"] for r in record["rows"]] == [1024, 2048]
    assert not (out / "saes" / "a-1k").exists() and (work / "seed-curve" / "a-1k" / "cfg.json").is_file()
    own = match_pair(*(dictionary_from_sae(SAE.load_from_disk(out / "saes" / s), s) for s in ("a", "b")))[0]
    last = record["rows"][-1]
    assert last["dec_share"] == own["dec_share"] and last["hungarian_share"] == own["hungarian_share"]
    assert last["gain"] == pytest.approx(last["dec_share"] - record["rows"][0]["dec_share"])
    assert list(curve_table(record)["training tokens"]) == ["0.001024M", "0.002048M"]
    assert "the shares are still rising at 0.002048M" in curve_sentence(record)  # 0.8 % then 4.7 %

    def corr(x, y):  # elementwise correlation of two SAEs' encoders
        x, y = x.flatten() - x.mean(), y.flatten() - y.mean()
        return float(x @ y / (x.norm() * y.norm()))

    # a and a-1k share init_seed 1 (4 and 8 steps from it); b starts from init_seed 2
    enc = {s: SAE.load_from_disk(f).W_enc.detach() for s, f in (("a", out / "saes" / "a"), ("b", out / "saes" / "b"),
                                                                 ("a-1k", work / "seed-curve" / "a-1k"))}
    assert abs(corr(enc["a"], enc["b"])) < 0.2 and corr(enc["a"], enc["a-1k"]) > 0.8

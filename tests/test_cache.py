"""possae.cache: a result is computed once per key, served back exactly, and never served for other inputs."""

import multiprocessing
import time

import pytest
import torch
from builders import make_sae, make_tiny_model, make_weights

from possae import cache
from possae.layer0_stats import exact_stats, layer0_stats, resolve_positions, resolve_token_weights
from possae.metrics import sae_quality


@pytest.fixture
def store(tmp_path, monkeypatch):
    """Point $POSSAE_CACHE_DIR at a fresh folder; return it."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    return tmp_path


def counting(value):
    """Return (compute, calls): compute returns value and counts its calls."""
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def test_without_a_cache_folder_every_call_computes(monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    compute, calls = counting(3)
    assert [cache.cached("k", (torch.ones(2),), compute) for _ in range(2)] == [3, 3]
    assert len(calls) == 2


def test_a_second_call_with_the_same_inputs_loads_the_first_result(store):
    compute, calls = counting({"x": torch.arange(5.0)})
    first = cache.cached("k", (torch.ones(3), "a", 2), compute)
    second = cache.cached("k", (torch.ones(3), "a", 2), compute)
    assert len(calls) == 1
    assert torch.equal(first["x"], second["x"])
    assert len(list((store / "k").glob("*.pt"))) == 1


@pytest.mark.parametrize("other", [
    (torch.tensor([1.0, 1.0, 1.0 + 2**-20]), "a", 2),  # one element changed in its last bits
    (torch.ones(3, dtype=torch.float64), "a", 2),  # same values, other dtype
    (torch.ones(1, 3), "a", 2),  # same bytes, other shape
    (torch.ones(3), "b", 2),
    (torch.ones(3), "a", 3),
])
def test_any_change_to_an_input_is_another_key(other):
    assert cache.content_key("k", torch.ones(3), "a", 2) != cache.content_key("k", *other)
    assert cache.content_key("k", torch.ones(3), "a", 2) != cache.content_key("j", torch.ones(3), "a", 2)


def test_a_module_is_keyed_by_its_class_config_and_weights():
    a, b = make_sae(seed=0), make_sae(seed=0)
    assert cache.content_key("k", a) == cache.content_key("k", b)
    with torch.no_grad():
        b.b_dec[0] += 1e-12
    assert cache.content_key("k", a) != cache.content_key("k", b)
    assert cache.content_key("k", make_sae("jumprelu", seed=0)) != cache.content_key("k", a)


def test_an_unkeyable_part_is_refused():
    with pytest.raises(TypeError, match="cannot key a cached result on a object"):
        cache.content_key("k", object())


def test_a_module_with_hooks_is_not_cached(store):
    sae = make_sae()
    handle = sae.hook_sae_acts_post.register_forward_hook(lambda m, i, o: o * 2)
    compute, calls = counting(1)
    cache.cached("k", (sae,), compute)
    cache.cached("k", (sae,), compute)
    handle.remove()
    assert len(calls) == 2 and not (store / "k").exists()


def test_a_corrupt_entry_is_computed_again_and_replaced(store):
    compute, calls = counting(torch.tensor([7.0]))
    cache.cached("k", (1,), compute)
    (entry,) = (store / "k").glob("*.pt")
    entry.write_bytes(b"not a torch file")
    assert torch.equal(cache.cached("k", (1,), compute), torch.tensor([7.0]))
    assert len(calls) == 2
    assert torch.equal(torch.load(entry, weights_only=False), torch.tensor([7.0]))


def _slow_compute_in_child(folder, log):
    """Compute (slowly) through the cache in a child process, logging each real computation."""
    import os

    os.environ[cache.CACHE_ENV] = str(folder)

    def compute():
        with open(log, "a") as f:
            f.write("computed\n")
        time.sleep(0.5)
        return 42

    return cache.cached("k", ("shared",), compute)


def test_concurrent_callers_compute_once(tmp_path):
    log = tmp_path / "log.txt"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_slow_compute_in_child, [(tmp_path / "store", log)] * 2)
    assert results == [42, 42]
    assert log.read_text().count("computed") == 1


def test_layer0_stats_through_the_cache_equal_a_fresh_computation(store):
    W_E, W_pos = make_weights(V=30, n=9)
    sae = make_sae(d=6, F=11)
    pos = resolve_positions(range(1, 9), 9)
    first = layer0_stats(W_E, W_pos, sae, positions=range(1, 9), device="cpu")
    second = layer0_stats(W_E, W_pos, sae, positions=range(1, 9), device="cpu")
    fresh = exact_stats(W_E, W_pos[pos], sae, resolve_token_weights(None, 30), pos, torch.device("cpu"))
    assert len(list((store / "layer0_exact").glob("*.pt"))) == 1
    for field in ("mean", "std", "firing_rate", "r2_pos", "r2_tok", "positions"):
        assert torch.equal(getattr(second, field), getattr(fresh, field))
        assert torch.equal(getattr(first, field), getattr(fresh, field))
    layer0_stats(W_E, W_pos, sae, positions=range(0, 9), device="cpu")  # other positions: another entry
    assert len(list((store / "layer0_exact").glob("*.pt"))) == 2


def test_sae_quality_shares_its_variance_part_between_calls(store):
    model = make_tiny_model(n_ctx=8)
    sae = make_sae(d=6, F=10, hook="blocks.0.hook_resid_pre")
    tokens = torch.randint(5, 200, (4, 8), generator=torch.Generator().manual_seed(0))
    full = sae_quality(model, sae, tokens)
    bare = sae_quality(model, sae, tokens, spliced_loss=False)
    assert len(list((store / "sae_variance").glob("*.pt"))) == 1
    assert len(list((store / "sae_spliced").glob("*.pt"))) == 1
    assert {k: full[k] for k in bare} == bare

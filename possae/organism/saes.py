"""The organism's SAE suite: training with sae_lens's runner, fp16 storage and held-out evaluation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from possae.corpora import CORPUS_NAMES
from possae.metrics import sae_metrics
from possae.organism.data import load_stream, windows
from possae.organism.lm import MODEL_DIR, device_name, load_saved_model, train_stream
from possae.organism.recipe import ARTIFACTS, ORGANISM_MODEL_NAME, SAERecipe, build_dir

SAE_DIR = "saes"


def _training_sae_config(r: SAERecipe, d_in: int):
    """Return the sae_lens training-SAE config of a recipe."""
    from sae_lens import (BatchTopKTrainingSAEConfig, JumpReLUTrainingSAEConfig, StandardTrainingSAEConfig,
                          TopKTrainingSAEConfig)

    common = dict(d_in=d_in, d_sae=d_in * r.expansion, normalize_activations="expected_average_only_in")
    if r.architecture == "standard":
        return StandardTrainingSAEConfig(**common, l1_coefficient=r.l1_coefficient,
                                         l1_warm_up_steps=_steps(r) // 10)
    if r.architecture == "topk":
        return TopKTrainingSAEConfig(**common, k=r.k)
    if r.architecture == "batchtopk":
        return BatchTopKTrainingSAEConfig(**common, k=r.k)
    if r.architecture == "jumprelu":  # GemmaScope-2 style quadratic penalty around a target L0 of k
        # the straight-through gradient also reaches the encoder: with it alone on the thresholds, 1M tokens
        # leave L0 far above the target
        return JumpReLUTrainingSAEConfig(**common, jumprelu_sparsity_loss_mode="quadratic", target_l0=float(r.k),
                                         l0_warm_up_steps=_steps(r) // 10, jumprelu_ste_to_input=True,
                                         jumprelu_bandwidth=0.1)
    raise ValueError(f"SAE recipe {r.sae_id!r}: architecture {r.architecture!r} is not one possae trains")


def _steps(r: SAERecipe) -> int:
    return r.training_tokens // r.batch_size_tokens


def runner_config(r: SAERecipe, d_in: int, out_path: Path, device: str):
    """Return the sae_lens LanguageModelSAERunnerConfig that trains recipe r on the organism."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    steps = _steps(r)
    return LanguageModelSAERunnerConfig(
        sae=_training_sae_config(r, d_in),
        model_name=ORGANISM_MODEL_NAME,
        hook_name=r.hook_name,
        dataset_path="possae-organism-corpora",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=r.context_size,
        prepend_bos=True,
        training_tokens=r.training_tokens,
        train_batch_size_tokens=r.batch_size_tokens,
        n_batches_in_buffer=max(8, -(-2 * r.batch_size_tokens // r.context_size)),
        store_batch_size_prompts=32,
        n_batches_for_norm_estimate=50,
        lr=r.lr,
        lr_warm_up_steps=steps // 20,
        lr_decay_steps=steps // 5,
        device=device,
        seed=r.seed,
        model_from_pretrained_kwargs={},
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=str(out_path),
        verbose=False,
    )


def token_dataset(context_size: int, bos_id: int, seed: int, corpora=CORPUS_NAMES, cache: Path | None = None):
    """Return a shuffled `datasets.Dataset` of BOS-prefixed training windows of context_size tokens."""
    from datasets import Dataset

    seqs = windows(train_stream(corpora, cache), context_size, bos_id)
    seqs = seqs[torch.from_numpy(np.random.default_rng(seed).permutation(len(seqs)))]
    return Dataset.from_dict({"tokens": seqs.numpy()}).with_format("torch")


def store_fp16(folder: Path) -> None:
    """Rewrite an SAE folder's weights in float16 (sae_lens casts them back to the cfg dtype on load)."""
    path = folder / "sae_weights.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(path).items()}, path)
    for extra in ("sparsity.safetensors", "runner_cfg.json"):
        (folder / extra).unlink(missing_ok=True)


def train_sae(r: SAERecipe, device: str | None = None, out_dir: Path = ARTIFACTS, work_dir: Path | None = None,
              corpora=CORPUS_NAMES) -> dict:
    """Train one SAE of the suite with sae_lens on the shipped organism; save it to out_dir/saes/<id>; return facts."""
    from sae_lens import LanguageModelSAETrainingRunner

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_saved_model(out_dir / MODEL_DIR, out_dir / "tokenizer", device=device)
    folder = out_dir / SAE_DIR / r.sae_id
    cfg = runner_config(r, model.cfg.d_model, folder, device)
    ds = token_dataset(r.context_size, model.tokenizer.bos_token_id, r.seed, r.corpora or corpora,
                       (work_dir or build_dir()) / "tokens")
    t0 = time.perf_counter()
    LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=ds).run()
    seconds = time.perf_counter() - t0
    store_fp16(folder)
    facts = {"sae_id": r.sae_id, "train_seconds": seconds, "device": device_name(device), "recipe": r.to_dict()}
    (folder / "training.json").write_text(json.dumps(facts, indent=2))
    return facts


def evaluate_sae(model, sae, context_size: int, corpora=CORPUS_NAMES, cache: Path | None = None,
                 tokens_per_corpus: int = 32_768) -> dict[str, float]:
    """Return L0, explained variance, MSE and dead-feature share of an SAE on held-out text at its context size."""
    bos = model.tokenizer.bos_token_id
    n = max(1, tokens_per_corpus // context_size)
    tokens = torch.cat([windows(load_stream(c, "heldout", cache), context_size, bos, max_windows=n) for c in corpora])
    return sae_metrics(model, sae, tokens)

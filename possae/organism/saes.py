"""The organism's SAE suite: training with sae_lens's runner, fp16 storage and held-out evaluation."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from possae.corpora import CORPUS_NAMES
from possae.devices import default_device
from possae.hooks import hook_layer
from possae.metrics import sae_quality
from possae.organism.data import load_stream, windows
from possae.organism.lm import MODEL_DIR, device_name, load_saved_model, train_stream
from possae.organism.recipe import ARTIFACTS, ORGANISM_MODEL_NAME, SAERecipe, build_dir
from possae.sae_files import TRAINING_FILE

SAE_DIR = "saes"


def jumprelu_start_threshold(k: float, d_sae: int, decoder_init_norm: float = 0.1) -> float:
    """Return the threshold at which a fresh JumpReLU SAE's L0 is about k: sae_lens starts W_enc as W_dec.T with rows of
    norm decoder_init_norm and normalises inputs to norm sqrt(d_in), so a pre-activation is about N(0,
    decoder_init_norm^2), and it exceeds decoder_init_norm * z on a share k / d_sae of inputs when P(Z > z) = k / d_sae."""
    from scipy.stats import norm

    if not 0 < k < d_sae:
        raise ValueError(f"the target L0 must lie strictly between 0 and d_sae = {d_sae}; got {k}.")
    return float(decoder_init_norm * norm.isf(k / d_sae))


def _training_sae_config(r: SAERecipe, d_in: int):
    """Return the sae_lens training-SAE config of a recipe."""
    from sae_lens import (BatchTopKTrainingSAEConfig, JumpReLUTrainingSAEConfig, StandardTrainingSAEConfig,
                          TopKTrainingSAEConfig)

    common = dict(d_in=d_in, d_sae=d_in * r.expansion, normalize_activations="expected_average_only_in",
                  decoder_init_norm=r.decoder_init_norm)
    if r.architecture == "standard":
        return StandardTrainingSAEConfig(**common, l1_coefficient=r.l1_coefficient,
                                         l1_warm_up_steps=0 if r.init_from else r.steps // 10)
    if r.architecture == "topk":
        return TopKTrainingSAEConfig(**common, k=r.k)
    if r.architecture == "batchtopk":
        return BatchTopKTrainingSAEConfig(**common, k=r.k)
    if r.architecture == "jumprelu":  # GemmaScope-2 style quadratic penalty around a target L0 of k
        # thresholds start where L0 starts at the target (jumprelu_start_threshold), so the straight-through gradient
        # stays on the thresholds: sent on to the encoder as well, it silenced 93 % of the latents in 1M tokens
        return JumpReLUTrainingSAEConfig(**common, jumprelu_sparsity_loss_mode="quadratic", target_l0=float(r.k),
                                         l0_warm_up_steps=r.steps // 10, jumprelu_ste_to_input=False,
                                         jumprelu_init_threshold=jumprelu_start_threshold(r.k, d_in * r.expansion,
                                                                                          r.decoder_init_norm),
                                         jumprelu_bandwidth=0.1, pre_act_loss_coefficient=r.pre_act_loss_coefficient)
    raise ValueError(f"SAE recipe {r.sae_id!r}: architecture {r.architecture!r} is not one possae trains")


def runner_config(r: SAERecipe, d_in: int, out_path: Path, device: str, model_name: str = ORGANISM_MODEL_NAME):
    """Return the sae_lens LanguageModelSAERunnerConfig that trains recipe r on the organism."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    steps = r.steps
    return LanguageModelSAERunnerConfig(
        sae=_training_sae_config(r, d_in),
        model_name=model_name,
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
        lr_warm_up_steps=r.warm_up_steps,
        lr_decay_steps=steps // 5,
        dead_feature_window=r.dead_feature_window,
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
              corpora=CORPUS_NAMES, tokenizer_dir: Path | None = None) -> dict:
    """Train one SAE of the suite with sae_lens on the model in out_dir (the organism, or its twin with
    tokenizer_dir the organism's tokenizer); save it to out_dir/saes/<id>; return facts."""
    from sae_lens import LanguageModelSAETrainingRunner

    device = str(default_device(device))
    model = load_saved_model(out_dir / MODEL_DIR, tokenizer_dir or out_dir / "tokenizer", device=device)
    folder = out_dir / SAE_DIR / r.sae_id
    staging = folder.with_name(f"{r.sae_id}.training")  # the old SAE stays in place until the new one is complete
    shutil.rmtree(staging, ignore_errors=True)
    cfg = runner_config(r, model.cfg.d_model, staging, device, model.cfg.model_name)
    ds = token_dataset(r.context_size, model.tokenizer.bos_token_id, r.seed, r.corpora or corpora,
                       (work_dir or build_dir()) / "tokens")
    start = None if r.init_from is None else resumable_sae(r, out_dir / SAE_DIR / r.init_from, model, ds)
    if r.init_seed is not None:  # sae_lens builds the SAE in the runner without seeding torch
        torch.manual_seed(r.init_seed)
    t0 = time.perf_counter()
    with DeadLatentLossRecorder() as dead_losses:
        LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=ds, override_sae=start).run()
    seconds = time.perf_counter() - t0
    store_fp16(staging)
    facts = {"sae_id": r.sae_id, "train_seconds": seconds, "device": device_name(device), "recipe": r.to_dict(),
             "dead_latent_loss": dead_losses.summary(r.steps)}
    (staging / TRAINING_FILE).write_text(json.dumps(facts, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return facts


@torch.no_grad()
def resumable_sae(r: SAERecipe, folder: Path, model, ds, n_windows: int = 64):
    """Return the SAE saved in `folder` as an sae_lens TrainingSAE ready to continue under recipe r.

    Saved SAEs have sae_lens's input normalisation folded into their weights; this unfolds it with the scale sae_lens
    will estimate on r's data (sqrt(d_in) / mean input norm, here from the first n_windows windows), so that the SAE
    computes exactly the same function at step 0, and r's L1 coefficient means what it meant in the first training."""
    from sae_lens import TrainingSAE

    if not folder.is_dir():
        raise FileNotFoundError(f"{r.sae_id} continues {folder.name}, which is not trained yet ({folder} is missing).")
    sae = TrainingSAE.load_from_disk(str(folder), device=str(model.cfg.device))
    x = model.run_with_cache(ds["tokens"][:n_windows].to(model.cfg.device), names_filter=r.hook_name,
                             stop_at_layer=hook_layer(r.hook_name) + 1)[1][r.hook_name]
    scale = model.cfg.d_model ** 0.5 / float(x.norm(dim=-1).mean())
    sae.fold_activation_norm_scaling_factor(1 / scale)  # W_enc / s, W_dec * s, b_dec * s: the SAE on s * x
    sae.cfg.normalize_activations = "expected_average_only_in"
    sae.cfg.l1_coefficient, sae.cfg.l1_warm_up_steps = r.l1_coefficient, 0
    return sae


class DeadLatentLossRecorder:
    """Records, while active, every step's dead-latent loss of sae_lens's training SAEs (TopK/BatchTopK auxiliary
    loss, JumpReLU pre-activation loss), to show whether it fired during a run."""

    TERMS = ("auxiliary_reconstruction_loss", "pre_act_loss")

    def __init__(self):
        self.values: list[float] = []

    def __enter__(self) -> "DeadLatentLossRecorder":
        from sae_lens import JumpReLUTrainingSAE, TopKTrainingSAE

        self._patched = []
        for cls in (TopKTrainingSAE, JumpReLUTrainingSAE):  # BatchTopK inherits TopK's
            original = cls.calculate_aux_loss

            def recording(sae, *args, _original=original, **kwargs):
                out = _original(sae, *args, **kwargs)
                terms = out if isinstance(out, dict) else {"auxiliary_reconstruction_loss": out}
                self.values.append(sum(float(v.detach()) for k, v in terms.items() if k in self.TERMS))
                return out

            cls.calculate_aux_loss = recording
            self._patched.append((cls, original))
        return self

    def __exit__(self, *exc) -> None:
        for cls, original in self._patched:
            cls.calculate_aux_loss = original

    def summary(self, steps: int) -> dict:
        """Return {steps, steps_recorded, steps_fired, first_fired_step, mean_when_fired} (None when no SAE computed it)."""
        fired = [i for i, v in enumerate(self.values) if v > 0]
        return {"steps": steps, "steps_recorded": len(self.values), "steps_fired": len(fired),
                "first_fired_step": fired[0] if fired else None,
                "mean_when_fired": float(np.mean([self.values[i] for i in fired])) if fired else None}


def evaluate_sae(model, sae, context_size: int, corpora=CORPUS_NAMES, cache: Path | None = None,
                 tokens_per_corpus: int = 32_768) -> dict[str, float]:
    """Return sae_lens's L0, explained variance, MSE and dead-feature share of an SAE on held-out text at its context size."""
    bos = model.tokenizer.bos_token_id
    n = max(1, tokens_per_corpus // context_size)
    tokens = torch.cat([windows(load_stream(c, "heldout", cache), context_size, bos, max_windows=n) for c in corpora])
    return sae_quality(model, sae, tokens, spliced_loss=False)

"""The organism's language model: construction, training (resumable), saving and held-out evaluation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from possae.corpora import CORPUS_NAMES
from possae.devices import default_device
from possae.metrics import next_token_ce
from possae.organism.data import TOKENIZER_DIR, EpochSampler, load_stream, load_tokenizer, windows
from possae.organism.recipe import (
    ARTIFACTS,
    GPT2POS_MODEL_NAME,
    ORGANISM_MODEL_NAME,
    ROTARY_MODEL_NAME,
    LMRecipe,
    build_dir,
)
from possae.tokenizer import BOS, load_hf_tokenizer
from possae.wpos import wpos_geometry

MODEL_DIR = "model"


def lm_config(recipe: LMRecipe, model_name: str | None = None) -> dict:
    """Return the HookedTransformerConfig keyword arguments of the organism's architecture (or its rotary twin's);
    `model_name` names a twin that the recipe alone does not (the GPT-2-geometry organism's rotary twin)."""
    d_head = recipe.d_model // recipe.n_heads
    rotary = recipe.positional_embedding_type == "rotary"
    return dict(
        d_model=recipe.d_model, d_head=d_head, n_heads=recipe.n_heads,
        d_mlp=recipe.d_mlp, n_layers=recipe.n_layers, n_ctx=recipe.n_ctx, d_vocab=recipe.d_vocab,
        act_fn=recipe.act_fn, normalization_type="LN", positional_embedding_type=recipe.positional_embedding_type,
        original_architecture="GPT2LMHeadModel",
        model_name=model_name or (ROTARY_MODEL_NAME if rotary else GPT2POS_MODEL_NAME if recipe.wpos == "gpt2"
                                  else ORGANISM_MODEL_NAME),
        seed=recipe.seed, default_prepend_bos=True, **({"rotary_dim": d_head} if rotary else {}),
    )


def build_model(cfg_kwargs: dict, tokenizer_dir: Path | None = None, device: str = "cpu"):
    """Return a freshly initialised HookedTransformer, with the tokenizer saved in tokenizer_dir attached."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = load_hf_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    cfg = HookedTransformerConfig(**cfg_kwargs, device=device)
    return HookedTransformer(cfg, tokenizer=tok, default_padding_side="right")


def save_model(model, out_dir: Path) -> Path:
    """Write the model as config.json + fp16 model.safetensors under out_dir/model; return the folder."""
    folder = out_dir / MODEL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    keys = ("d_model", "d_head", "n_heads", "d_mlp", "n_layers", "n_ctx", "d_vocab", "act_fn",
            "normalization_type", "positional_embedding_type", "original_architecture", "model_name",
            "seed", "default_prepend_bos")
    if model.cfg.positional_embedding_type == "rotary":
        keys += ("rotary_dim",)
    cfg = {k: getattr(model.cfg, k) for k in keys}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()
             if not k.endswith(("IGNORE", ".mask"))}
    save_file(state, folder / "model.safetensors")
    return folder


def load_saved_model(folder: Path, tokenizer_dir: Path | None = None, device: str = "cpu"):
    """Return the HookedTransformer saved in `folder` (weights cast to float32)."""
    cfg = json.loads((folder / "config.json").read_text())
    model = build_model(cfg, tokenizer_dir, device)
    state = {k: v.float() for k, v in load_file(folder / "model.safetensors").items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("IGNORE", ".mask"))]
    if missing or unexpected:
        raise RuntimeError(f"Saved model at {folder} does not match its config: missing {missing}, unexpected {unexpected}")
    return model.eval()


def freeze_all_but_last_wpos_row(model) -> None:
    """Make W_pos[n_ctx - 1] the model's only trainable weights (other parameters frozen, other W_pos rows' gradient zeroed)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.W_pos.requires_grad_(True)
    mask = torch.zeros_like(model.W_pos)
    mask[-1] = 1.0
    model.W_pos.register_hook(lambda grad: grad * mask)


def _param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices except W_pos: decay would cap how many steps of noisy positional
    gradient W_pos averages over, and W_pos's structure is what the book studies."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2 and n != "pos_embed.W_pos"]
    no_decay = [p for n, p in trainable if p.ndim < 2 or n == "pos_embed.W_pos"]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_at(step: int, recipe: LMRecipe) -> float:
    """Return the learning rate at `step`: linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    t = (step - recipe.warmup_steps) / max(1, recipe.total_steps - recipe.warmup_steps)
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def next_token_losses(model, tokens: Int[Tensor, "batch n_plus_1"]) -> Float[Tensor, "batch n"]:
    """Return the cross-entropy of every next-token prediction in windows of n + 1 tokens.

    The model reads the first n tokens and each of its n positions is scored against the next token, so with
    n = n_ctx the loss reaches every row of W_pos (windows of n_ctx tokens would leave W_pos[n_ctx - 1] untrained)."""
    return next_token_ce(model(tokens[:, :-1], return_type="logits"), tokens[:, 1:])


def next_token_loss(model, tokens: Int[Tensor, "batch n_plus_1"]) -> Float[Tensor, ""]:
    """Return the mean of next_token_losses: the training loss."""
    return next_token_losses(model, tokens).mean()


def train_stream(corpora=CORPUS_NAMES, cache: Path | None = None) -> np.ndarray:
    """Return the concatenated training token stream of the given corpora."""
    return np.concatenate([load_stream(c, "train", cache) for c in corpora])


def train_language_model(
    recipe: LMRecipe = LMRecipe(),
    out_dir: Path = ARTIFACTS,
    work_dir: Path | None = None,
    corpora=CORPUS_NAMES,
    device: str | None = None,
    log_every: int = 50,
    geometry_every: int = 250,
    checkpoint_every: int = 250,
    log_file: Path | None = None,
    compile: bool = True,
    stop_at: int | None = None,
    init_from: Path | None = None,
    tokenizer_dir: Path | None = None,
    token_cache: Path | None = None,
    model_name: str | None = None,
) -> dict:
    """Train (or resume) the organism's language model; save it to out_dir/model; return training facts.

    With `stop_at`, stop after that step with a checkpoint in work_dir (a later call resumes from it).
    With `init_from` (a folder holding model/ as save_model writes it), continue from those weights; the facts
    then name them (sha256) and carry the facts of their own training (init_from/lm_training.json) as "init".
    The tokenizer is read from `tokenizer_dir` (default out_dir/tokenizer; the rotary twin shares the organism's),
    the token streams from `token_cache` (default work_dir/tokens)."""
    init = init_facts(Path(init_from)) if init_from is not None else None  # fail before any work
    device = str(default_device(device))
    work_dir = work_dir or build_dir()
    tokenizer_dir = tokenizer_dir or out_dir / TOKENIZER_DIR
    tok = load_tokenizer(tokenizer_dir)
    bos = tok.token_to_id(BOS)
    torch.manual_seed(recipe.seed)
    model = build_model(lm_config(recipe, model_name), tokenizer_dir, device)
    has_wpos = recipe.positional_embedding_type == "standard"
    projection = None
    if recipe.wpos == "gpt2":  # GPT-2's geometry, fixed: every weight but W_pos trains
        from possae.wpos import load_gpt2_wpos, project_wpos

        W, projection = project_wpos(load_gpt2_wpos(), recipe.d_model)
        if len(W) != recipe.n_ctx:
            raise ValueError(f"GPT-2's W_pos has {len(W)} rows: the recipe's n_ctx must be {len(W)}, not {recipe.n_ctx}")
        with torch.no_grad():
            model.W_pos.copy_(W)
        model.W_pos.requires_grad_(False)
    if init_from is not None:
        model.load_state_dict(load_saved_model(Path(init_from) / MODEL_DIR, device=device).state_dict())
    elif recipe.zero_init_wpos and has_wpos:
        with torch.no_grad():
            model.W_pos.zero_()
    if recipe.trainable == "last_wpos_row":
        freeze_all_but_last_wpos_row(model)
    opt = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=recipe.betas)
    sampler = EpochSampler(train_stream(corpora, token_cache or work_dir / "tokens"), recipe.n_ctx + 1, recipe.batch_size, bos, recipe.seed)
    ckpt_path = work_dir / "lm_checkpoint.pt"
    start, elapsed, history = 0, 0.0, []
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["recipe"] == recipe.to_dict() and ckpt.get("init") == init:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            start, elapsed, history = ckpt["step"], ckpt["elapsed"], ckpt["history"]
        else:
            print(f"Ignoring {ckpt_path}: it was trained with another recipe.")
    log = open(log_file, "a") if log_file else None

    def save_checkpoint(step: int) -> None:
        torch.save({"recipe": recipe.to_dict(), "init": init, "model": model.state_dict(), "opt": opt.state_dict(),
                    "step": step, "elapsed": elapsed, "history": history}, ckpt_path)

    model.train()
    forward = torch.compile(model) if compile else model
    tokens_per_step = recipe.batch_size * recipe.n_ctx
    bar = tqdm(range(start, recipe.total_steps), initial=start, total=recipe.total_steps, desc="training LM")
    t0, running = time.perf_counter(), None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, recipe)
        loss = next_token_loss(forward, sampler.batch(step).to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        done = step + 1
        if done % log_every == 0 or done == recipe.total_steps:
            now = time.perf_counter()
            elapsed, t0 = elapsed + now - t0, now
            row = {"step": done, "tokens": done * tokens_per_step, "loss": running, "elapsed_s": elapsed}
            if has_wpos and (done % geometry_every == 0 or done == recipe.total_steps):
                row.update(wpos_geometry(model.W_pos.detach().cpu()))
            history.append(row)
            bar.set_postfix(loss=f"{running:.3f}", **{k: f"{v:.3f}" for k, v in row.items() if k in ("top3_share", "adjacent_cosine")})
            if log:
                log.write(json.dumps(row) + "\n")
                log.flush()
        if done % checkpoint_every == 0 or done == stop_at:
            save_checkpoint(done)
        if done == stop_at:
            return {"stopped_at": done, "history": history}
    now = time.perf_counter()
    elapsed += now - t0
    save_checkpoint(recipe.total_steps)
    model.eval()
    save_model(model, out_dir)
    facts = {
        "recipe": recipe.to_dict(), "steps": recipe.total_steps, "tokens_seen": recipe.total_steps * tokens_per_step,
        "train_stream_tokens": int(len(sampler.stream)), "epochs": recipe.total_steps * tokens_per_step / len(sampler.stream),
        "train_seconds": elapsed, "device": device_name(device), "positions_scored": recipe.n_ctx,
        "history": history, **({"init": init} if init else {}), **({"wpos_projection": projection} if projection else {}),
    }
    (work_dir / "lm_training.json").write_text(json.dumps(facts, indent=2))
    return facts


def init_facts(folder: Path) -> dict:
    """Return what identifies a starting point: its weights' sha256 and, when saved beside them, its training facts."""
    import hashlib

    weights = folder / MODEL_DIR / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"No {weights}: init_from must be a folder holding {MODEL_DIR}/ as save_model writes it.")
    facts = {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    if (folder / "lm_training.json").is_file():
        facts["training"] = json.loads((folder / "lm_training.json").read_text())
    return facts


def device_name(device: str) -> str:
    """Return a readable name of the device training ran on."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(0)
    import os
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


@torch.no_grad()
def evaluate_lm(model, corpora=CORPUS_NAMES, cache: Path | None = None, max_windows: int = 64, batch_size: int = 16,
                near_end: int = 16) -> pd.DataFrame:
    """Return held-out cross-entropy per corpus beside a unigram baseline fitted on the training split (nats/token),
    with the loss at the last position and the mean over the `near_end` positions before it."""
    bos = model.tokenizer.bos_token_id
    counts = np.zeros(model.cfg.d_vocab, dtype=np.float64)
    for c in corpora:
        counts += np.bincount(np.asarray(load_stream(c, "train", cache)), minlength=model.cfg.d_vocab)
    log_unigram = torch.from_numpy(np.log((counts + 0.5) / (counts + 0.5).sum()))
    rows = []
    device = model.cfg.device
    for c in corpora:
        seqs = windows(load_stream(c, "heldout", cache), model.cfg.n_ctx + 1, bos, max_windows=max_windows)
        losses = torch.cat([next_token_losses(model, seqs[i : i + batch_size].to(device)).cpu()
                            for i in range(0, len(seqs), batch_size)])
        targets = seqs[:, 1:]
        rows.append({"corpus": c, "heldout_tokens": targets.numel(), "loss": losses.mean().item(),
                     "unigram_loss": (-log_unigram[targets]).mean().item(),
                     "last_position_loss": losses[:, -1].mean().item(),
                     "near_end_loss": losses[:, -1 - near_end : -1].mean().item()})
    df = pd.DataFrame(rows)
    df["loss_over_unigram"] = df["loss"] / df["unigram_loss"]
    return df

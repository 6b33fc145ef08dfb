"""The fine-tuning sweep (issue 21): relu-short of the GPT-2-geometry organism continued on full contexts at each
learning rate and warm-up of recipe.finetune_sweep_saes, each measured on the past-context chapter's held-out windows
against the two verdicts the ledger gives fine-tuning; the record names the best recipe.

    possae organism sweep --positional gpt2   # trains into build/organism/gpt2/finetune-sweep, writes SWEEP_FILE

The sweep's SAEs are not shipped (only the record is); the shipped fine-tuned SAEs use the best recipe's rate and
warm-up (recipe.GPT2POS_FINETUNE_LR, GPT2POS_FINETUNE_WARM_UP).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import torch

from possae.organism.recipe import GPT2POS_ARTIFACTS, SAERecipe, build_dir, finetune_sweep_saes
from possae.organism.saes import SAE_DIR
from possae.length import SAE_LABEL, error_summary
from possae.past_context import PastContextParams, loss_summary, splice_position_sums
from possae.sae_files import SWEEP_FILE, write_record
from possae.thresholds import RESTORE_FACTOR, SAME_BAND

SWEEP_HELDOUT_TOKENS = PastContextParams.n_heldout_tokens  # the past-context chapter's sample, which reads the record


def nearness(break_ratio: float, fidelity_ratio: float) -> float:
    """Return how near a fine-tuned SAE comes to passing both verdicts: the larger of its two figures, each over its
    threshold (nMSE past / its own inside over RESTORE_FACTOR; its inside / the SAE's inside over SAME_BAND); at most 1
    when it passes both."""
    return max(break_ratio / RESTORE_FACTOR, fidelity_ratio / SAME_BAND)


def sweep_rows(sums, recipes: dict[str, SAERecipe], context_size: int) -> pd.DataFrame:
    """Return per fine-tuned SAE (splice_position_sums labels) its recipe, nMSE and added loss inside and past the
    context, the two verdict figures and their nearness, best (nearest) first."""
    own = error_summary(sums, SAE_LABEL, context_size)
    rows = []
    for sid, r in recipes.items():
        e, loss = error_summary(sums, sid, context_size), loss_summary(sums, sid, context_size)
        rows.append({"sae_id": sid, "lr": r.lr, "warm_up_share": r.warm_up_share, "tokens": r.training_tokens,
                     "nmse_in": e.nmse_in, "nmse_past": e.nmse_past, "dce_in": loss.in_context, "dce_past": loss.past,
                     "break_ratio": e.nmse_past / e.nmse_in, "fidelity_ratio": e.nmse_in / own.nmse_in})
    df = pd.DataFrame(rows)
    df["nearness"] = [nearness(b, f) for b, f in zip(df["break_ratio"], df["fidelity_ratio"])]
    df["passes_both"] = df["nearness"] <= 1
    return df.sort_values("nearness", kind="stable").reset_index(drop=True)


@torch.no_grad()
def dead_shares(model, saes: dict[str, object], windows: torch.Tensor) -> dict[str, float]:
    """Return per SAE the share of its latents that fire on none of the windows' layer-0 inputs (special tokens left
    out)."""
    from possae.hooks import LAYER0_INPUT, hook_activations
    from possae.tokenizer import special_token_ids

    keep = ~torch.isin(windows, torch.tensor(special_token_ids(model.tokenizer), dtype=windows.dtype))
    x = hook_activations(model, windows.to(model.cfg.device), LAYER0_INPUT)[keep.to(model.cfg.device)]
    return {sid: float((sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype)) > 0).any(0).logical_not().double().mean())
            for sid, sae in saes.items()}


@torch.no_grad()
def measure_sweep(folder: Path, recipes: dict[str, SAERecipe], release: str = "organism-gpt2pos",
                  n_heldout_tokens: int = SWEEP_HELDOUT_TOKENS, device: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Return (sweep_rows of the SAEs saved in folder/<id>, facts: the raw SAE's nMSE inside and past, the windows)."""
    from sae_lens import SAE

    from possae.heldout import heldout_windows
    from possae.hooks import sae_context_size
    from possae.loaders import load_model_and_sae

    model, sae = load_model_and_sae(release, "relu-short", device=device)
    C = sae_context_size(sae, model.cfg.n_ctx)
    tuned = {sid: SAE.load_from_disk(str(folder / sid), device=str(sae.W_enc.device)) for sid in recipes}
    windows = heldout_windows(model.tokenizer, model.cfg.n_ctx + 1, n_heldout_tokens)
    sums = splice_position_sums(model, sae, windows, finetuned=tuned)
    own = error_summary(sums, SAE_LABEL, C)
    dead = dead_shares(model, {SAE_LABEL: sae, **tuned}, windows[:, :-1])
    facts = {"release": release, "context_size": C, "n_ctx": model.cfg.n_ctx, "n_heldout_tokens": n_heldout_tokens,
             "heldout_inputs": int(sums.n.sum()), "sae_nmse_in": own.nmse_in, "sae_nmse_past": own.nmse_past,
             "restore_factor": RESTORE_FACTOR, "same_band": SAME_BAND, "sae_dead_share": dead.pop(SAE_LABEL)}
    rows = sweep_rows(sums, recipes, C)
    return rows.assign(dead_share=rows["sae_id"].map(dead)), facts


def run_sweep(device: str | None = None, out_dir: Path = GPT2POS_ARTIFACTS, work_dir: Path | None = None,
              tokenizer_dir: Path | None = None, recipes: tuple[SAERecipe, ...] | None = None,
              n_heldout_tokens: int = SWEEP_HELDOUT_TOKENS, release: str = "organism-gpt2pos") -> Path:
    """Train every sweep recipe not yet trained (into work_dir/finetune-sweep), measure them all, and write the record
    (out_dir/SWEEP_FILE: facts, each recipe's row, the best recipe); return its path."""
    from possae.organism.saes import train_sae

    recipes = recipes or finetune_sweep_saes()
    folder = (work_dir or build_dir()) / "finetune-sweep"
    folder.mkdir(parents=True, exist_ok=True)
    trained = {}
    for r in recipes:
        if not (folder / r.sae_id / "cfg.json").is_file():
            facts = train_sae(r, device=device, out_dir=out_dir, tokenizer_dir=tokenizer_dir)  # tokens: build_dir()
            shutil.rmtree(folder / r.sae_id, ignore_errors=True)
            (out_dir / SAE_DIR / r.sae_id).rename(folder / r.sae_id)  # the sweep's SAEs are not shipped
            print(json.dumps({k: facts[k] for k in ("sae_id", "train_seconds")}), flush=True)
        trained[r.sae_id] = r
    rows, facts = measure_sweep(folder, trained, release, n_heldout_tokens, device)
    record = {**facts, "rows": rows.to_dict(orient="records"), "best": rows.iloc[0]["sae_id"],
              "command": "possae organism sweep --positional gpt2"}
    return write_record(out_dir, SWEEP_FILE, record)

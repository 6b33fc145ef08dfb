"""The organism's model card: data, training, held-out losses, W_pos geometry and per-SAE metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from possae.corpora import CORPORA, HELD_OUT_FRACTION
from possae.organism.data import load_stream
from possae.organism.lm import evaluate_lm
from possae.organism.recipe import ARTIFACTS, GPT2POS_MODEL_NAME, OrganismRecipe, build_dir
from possae.organism.saes import SAE_DIR, evaluate_sae
from possae.wpos import last_row, load_gpt2_wpos, norm_ratio, pc_winding, wpos_geometry
from possae.sae_files import read_training

CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
WPOS_TARGETS = {"cpu": {"top3_share": 0.5, "adjacent_cosine": 0.8}, "gpu": {"top3_share": 0.99, "adjacent_cosine": 0.99}}
DEAD_SHARE_TARGET = 0.10  # every shipped SAE should have at most this share of latents silent on held-out text
GEOMETRY_TOLERANCE = 0.01  # the GPT-2-geometry organism's top-3 share and adjacent cosine must be this close to GPT-2's
TURNS_TOLERANCE = 0.05  # ... and its turns in the PC1-PC2 plane this close (a projection keeps them almost exactly)


def read_model_card(folder: Path = ARTIFACTS) -> dict:
    """Return the shipped model card as a dict."""
    return json.loads((folder / CARD_JSON).read_text())


def artifact_megabytes(folder: Path = ARTIFACTS) -> float:
    """Return the total size of the shipped artifacts in MB."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def lm_training_stages(folder: Path = ARTIFACTS, work_dir: Path | None = None) -> list[dict]:
    """Return the language model's training stages (oldest first, each with its history): from the build folder's
    facts, else from the shipped card."""
    log = (work_dir or build_dir()) / "lm_training.json"
    if log.is_file():
        return training_stages(json.loads(log.read_text()))
    if (folder / CARD_JSON).is_file():
        card = read_model_card(folder)
        return [{**st, "history": [{k: v for k, v in row.items() if k != "stage"} for row in card["training_curve"]
                                   if row["stage"] == i]} for i, st in enumerate(card["training_stages"])]
    raise FileNotFoundError(f"No {log} and no shipped model card: train the model first (`possae organism model`).")


def training_stages(facts: dict) -> list[dict]:
    """Return the training stages that made a model, oldest first: each run's facts without its "init" link."""
    earlier = training_stages(facts["init"]["training"]) if "training" in facts.get("init", {}) else []
    stage = {k: v for k, v in facts.items() if k != "init"}
    stage["positions_scored"] = facts.get("positions_scored", facts["recipe"]["n_ctx"] - 1)  # older trainer: n_ctx - 1
    if "init" in facts:
        stage["init_sha256"] = facts["init"]["sha256"]
    return earlier + [stage]


def wpos_facts(W_pos, W_E, first: int = 1) -> dict[str, float]:
    """Return how far W_pos's rows first.. wind (pc_winding) and the ratio of its mean row norm to W_E's."""
    return {**pc_winding(W_pos[first:]), "wpos_over_we_norm": norm_ratio(W_pos, W_E, first)}


def gpt2_geometry_check(W_pos, gpt2_W_pos) -> dict:
    """Return rows 1..n-1 of W_pos against GPT-2's: top-3 share, adjacent cosine and turns of each, and whether all three
    agree within GEOMETRY_TOLERANCE and TURNS_TOLERANCE."""
    own, ref = {**wpos_geometry(W_pos), **pc_winding(W_pos[1:])}, {**wpos_geometry(gpt2_W_pos), **pc_winding(gpt2_W_pos[1:])}
    ok = (abs(own["top3_share"] - ref["top3_share"]) <= GEOMETRY_TOLERANCE
          and abs(own["adjacent_cosine"] - ref["adjacent_cosine"]) <= GEOMETRY_TOLERANCE
          and abs(own["turns"] - ref["turns"]) <= TURNS_TOLERANCE)
    keys = ("top3_share", "adjacent_cosine", "turns")
    return {"organism": {k: own[k] for k in keys}, "gpt2": {k: ref[k] for k in keys}, "passes": ok}


def collect_model_card(recipe: OrganismRecipe = OrganismRecipe(), device: str = "cpu", folder: Path = ARTIFACTS,
                       work_dir: Path | None = None) -> dict:
    """Measure everything the model card reports, on held-out text, and return it as a dict (the first organism's,
    or with folder and work_dir of a variant, that variant's; the tokenizer is always the first organism's)."""
    from possae.organism.data import TOKENIZER_DIR
    from possae.organism.lm import MODEL_DIR, load_saved_model

    model = load_saved_model(folder / MODEL_DIR, ARTIFACTS / TOKENIZER_DIR, device=device)
    stages = lm_training_stages(folder, work_dir)
    n_ctx = model.cfg.n_ctx
    short = min((r.context_size for r in recipe.saes), default=n_ctx // 4)
    data = [{"corpus": c.name, "group": c.group, "files": list(c.files),
             "train_tokens": int(len(load_stream(c.name, "train"))),
             "heldout_tokens": int(len(load_stream(c.name, "heldout")))} for c in CORPORA]
    W_pos = model.W_pos.detach().cpu()
    card = {
        "name": model.cfg.model_name,
        "architecture": {k: getattr(model.cfg, k) for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp",
                                                            "n_ctx", "d_vocab", "act_fn", "normalization_type",
                                                            "positional_embedding_type")},
        "n_params": sum(p.numel() for p in model.parameters()),
        "tokenizer": {"type": "byte-level BPE (tokenizers)", "vocab_size": model.cfg.d_vocab,
                      "bos_eos": model.tokenizer.bos_token},
        "data": {"held_out_fraction": HELD_OUT_FRACTION, "held_out_rule": "the last documents of every corpus",
                 "corpora": data},
        "training_stages": [{k: v for k, v in st.items() if k != "history"} for st in stages],
        "training_curve": [{"stage": i, **row} for i, st in enumerate(stages) for row in st["history"]],
        "heldout": evaluate_lm(model).to_dict(orient="records"),
        "wpos_geometry": {
            f"rows_1_{n_ctx - 1}": wpos_geometry(W_pos, 1, n_ctx),
            f"rows_1_{short - 1}": wpos_geometry(W_pos, 1, short),
            "last_row": last_row(W_pos),
            "targets": WPOS_TARGETS,
        },
        "wpos": wpos_facts(W_pos, model.W_E.detach().cpu()),
        "saes": {},
    }
    for r in recipe.saes:
        if (folder / SAE_DIR / r.sae_id / "cfg.json").is_file():
            card["saes"][r.sae_id] = sae_card_entry(r, model, folder, device)
    if model.cfg.model_name == GPT2POS_MODEL_NAME:
        card["wpos_projection"] = stages[-1].get("wpos_projection")
        card["gpt2_check"] = gpt2_geometry_check(W_pos, load_gpt2_wpos())
        first = load_saved_model(ARTIFACTS / MODEL_DIR, device=device)
        card["first_organism"] = {"heldout": read_model_card(ARTIFACTS)["heldout"],
                                  "wpos": wpos_facts(first.W_pos.detach().cpu(), first.W_E.detach().cpu())}
    card["artifact_mb"] = artifact_megabytes(folder)
    return card


def sae_card_entry(r, model, folder: Path = ARTIFACTS, device: str = "cpu") -> dict:
    """Return the model card's entry for the SAE of recipe r saved in folder: its recipe, training facts and held-out
    figures."""
    from sae_lens import SAE

    sae_folder = folder / SAE_DIR / r.sae_id
    sae = SAE.load_from_disk(sae_folder, device=device)
    facts = read_training(sae_folder)
    return {
        "description": r.description, "hook_name": r.hook_name, "architecture": r.architecture,
        "d_sae": sae.cfg.d_sae, "context_size": r.context_size, "training_tokens": r.training_tokens,
        "l1_coefficient": r.l1_coefficient if r.architecture == "standard" else None, "k": r.k,
        "corpora": list(r.corpora) if r.corpora else "all", "seed": r.seed, "init_seed": r.init_seed,
        "train_seconds": facts["train_seconds"], "device": facts["device"],
        "dead_window_tokens": r.dead_window_tokens, "dead_latent_loss": facts.get("dead_latent_loss"),
        "heldout": evaluate_sae(model, sae, r.context_size),
    }


def refresh_sae_entries(ids: set[str], recipe: OrganismRecipe = OrganismRecipe(), device: str | None = None,
                        folder: Path = ARTIFACTS) -> Path:
    """Measure again only the SAEs named in ids (retrained with `possae organism saes --only`) and rewrite their entries
    of the model card, keeping every other figure; return the markdown path."""
    from possae.organism.data import TOKENIZER_DIR
    from possae.organism.lm import MODEL_DIR, load_saved_model

    recipes = {r.sae_id: r for r in recipe.saes}
    unknown = sorted(ids - set(recipes))
    if unknown:
        raise ValueError(f"no SAE of this organism's recipe is called {', '.join(unknown)}; known: {', '.join(recipes)}.")
    card = read_model_card(folder)
    model = load_saved_model(folder / MODEL_DIR, ARTIFACTS / TOKENIZER_DIR, device=device or "cpu")
    for sae_id in sorted(ids):
        card["saes"][sae_id] = sae_card_entry(recipes[sae_id], model, folder, device or "cpu")
    card["artifact_mb"] = artifact_megabytes(folder)
    (folder / CARD_JSON).write_text(json.dumps(card, indent=1))
    (folder / CARD_MD).write_text(card_markdown(card))
    return folder / CARD_MD


def stages_frame(card: dict) -> pd.DataFrame:
    """Return one row per training stage of the language model: where it started, what trained, on what and how long."""
    rows = []
    for i, st in enumerate(card["training_stages"]):
        r = st["recipe"]
        rows.append({
            "stage": i + 1,
            "started from": f"stage {i} (sha256 {st['init_sha256'][:12]}...)" if "init_sha256" in st else "scratch",
            "trained": "W_pos[n_ctx - 1] only" if r.get("trainable") == "last_wpos_row" else "all weights",
            "steps": st["steps"], "batch": r["batch_size"], "tokens": st["tokens_seen"], "epochs": st["epochs"],
            "lr": r["lr"], "positions scored": f"{st['positions_scored']} of {r['n_ctx']}",
            "seconds": st["train_seconds"], "device": st["device"]})
    return pd.DataFrame(rows)


def organism_training_note(card: dict) -> str:
    """Return a paragraph saying how the language model was trained, stage by stage, and what that did to its last position."""
    stages, n_ctx = card["training_stages"], card["architecture"]["n_ctx"]
    parts = []
    for i, st in enumerate(stages):
        trained = ("only W_pos[n_ctx - 1]" if st["recipe"].get("trainable") == "last_wpos_row" else "every weight")
        parts.append(f"stage {i + 1} trained {trained} on {st['tokens_seen']:,} tokens ({st['epochs']:.2f} epochs) in "
                     f"{st['train_seconds']:.0f} s on {st['device']}, scoring {st['positions_scored']} of {n_ctx} positions")
    text = f"The organism's language model was trained in {len(stages)} stage{'s' if len(stages) > 1 else ''}: " + "; ".join(parts) + "."
    if any(st["positions_scored"] < n_ctx for st in stages[:-1]) and stages[-1]["positions_scored"] == n_ctx:
        text += (f" The first stage's trainer never scored position {n_ctx - 1}, so W_pos[{n_ctx - 1}] stayed zero; the "
                 "last stage trained that row with every position scored and every other weight frozen "
                 "(`possae organism model --recipe continue --init-from FOLDER`). Today's trainer scores every position "
                 "from the start.")
    heldout = pd.DataFrame(card["heldout"])
    if "last_position_loss" in heldout:
        text += (f" Held-out loss at position {n_ctx - 1}: {heldout['last_position_loss'].mean():.3f} nats, against "
                 f"{heldout['near_end_loss'].mean():.3f} over the 16 positions before it (mean of the corpora).")
    return text


def card_markdown(card: dict) -> str:
    """Return the model card rendered as markdown."""
    a = card["architecture"]
    stages = card["training_stages"]
    gpt2pos = "gpt2_check" in card
    intro = ("A small GPT-2-architecture language model whose positional embedding is GPT-2 small's own, projected "
             "to its d_model and frozen during training, and layer-0 sparse autoencoders trained on it with sae_lens. "
             "The layer-0 chapters run on it by default. Rebuild it with `possae organism model --positional gpt2` "
             "and `possae organism saes --positional gpt2`, then `possae organism card --positional gpt2` (data path: "
             "`--data` or `$POSSAE_DATA`; the tokenizer and token streams are the first organism's)."
             if gpt2pos else
             "A small GPT-2-architecture language model with learned absolute positional embeddings, and sparse "
             "autoencoders trained on it with sae_lens. It is the offline stand-in for gpt2-small and its SAEs. "
             "Rebuild it with `possae organism all` (data path: `--data` or `$POSSAE_DATA`).")
    lines = [
        "# possae model organism, GPT-2's positional geometry" if gpt2pos else "# possae model organism", "", intro, "",
        "## Architecture", "",
        f"{a['n_layers']} layers, d_model {a['d_model']}, {a['n_heads']} heads of {a['d_head']}, d_mlp {a['d_mlp']}, "
        f"n_ctx {a['n_ctx']}, vocabulary {a['d_vocab']} ({card['tokenizer']['type']}, `{card['tokenizer']['bos_eos']}` "
        f"as BOS/EOS), {a['act_fn']}, {a['normalization_type']}, {a['positional_embedding_type']} positional "
        f"embeddings; {card['n_params']:,} parameters.", "",
        "## Data", "",
        f"Held out: {card['data']['held_out_fraction']:.0%} of every corpus ({card['data']['held_out_rule']}).", "",
        pd.DataFrame(card["data"]["corpora"]).drop(columns="files").to_markdown(index=False), "",
        "## Training", "",
        stages_frame(card).to_markdown(index=False, floatfmt=".4g"), "",
        *[f"Stage {i + 1} recipe: `{json.dumps(st['recipe'])}`" for i, st in enumerate(stages)], "",
    ]
    lines += [organism_training_note(card), ""]
    if gpt2pos:
        lines += gpt2pos_sections(card)
    heldout = pd.DataFrame(card["heldout"])
    lines += [
        "## Held-out loss (nats/token) vs a unigram baseline", "",
        f"Windows of n_ctx + 1 tokens, every position scored; `last_position_loss` is the loss at position "
        f"{a['n_ctx'] - 1}, `near_end_loss` the mean over the 16 positions before it.", "",
        heldout.to_markdown(index=False, floatfmt=".3f"), "",
        f"Mean over the corpora: loss {heldout['loss'].mean():.3f}, unigram {heldout['unigram_loss'].mean():.3f}; "
        f"last position {heldout['last_position_loss'].mean():.3f} against {heldout['near_end_loss'].mean():.3f} "
        f"just before it.", "",
        "## W_pos geometry", "",
    ]
    geo = card["wpos_geometry"]
    for rows, g in geo.items():
        if rows.startswith("rows"):
            lines.append(f"- {rows.replace('_', ' ', 1).replace('_', '..')}: top-3 PC variance share "
                         f"{g['top3_share']:.1%}, mean adjacent-position cosine {g['adjacent_cosine']:.3f}")
    if "last_row" in geo:
        lr = geo["last_row"]
        lines.append(f"- the last row, W_pos[{a['n_ctx'] - 1}]: norm {lr['norm']:.3f} (its neighbour's "
                     f"{lr['previous_norm']:.3f}), cosine to its neighbour {lr['cosine_to_previous']:.3f}")
    full = next(g for k, g in geo.items() if k.startswith("rows"))
    if not gpt2pos:
        kind = "gpu" if stages[0]["recipe"]["train_tokens"] >= 10 * 10_500_000 else "cpu"
        target = geo["targets"][kind]
        met = full["top3_share"] >= target["top3_share"] and full["adjacent_cosine"] >= target["adjacent_cosine"]
        lines += ["", f"Targets of the {kind} recipe (top-3 >= {target['top3_share']:.0%}, adjacent cosine >= "
                  f"{target['adjacent_cosine']}): " + ("met." if met else "**not met**.")
                  + " GPT-2 small reads 95.0 % and 0.9985 on rows 1..255."]
    if "wpos" in card:
        w = card["wpos"]
        lines.append(f"- rows 1..{a['n_ctx'] - 1} wind {w['turns']:.2f} turns in the PC1-PC2 plane (PC1 and PC2 cross "
                     f"zero {w['pc1_crossings']} and {w['pc2_crossings']} times); mean row norm over W_E's "
                     f"{w['wpos_over_we_norm']:.3f}")
    lines += ["", "## SAEs", ""]
    rows = [{"sae_id": k, "hook": v["hook_name"].replace(".hook_resid_pre", ""), "architecture": v["architecture"],
             "k": v["k"] or "", "d_sae": v["d_sae"], "context": v["context_size"], "tokens": v["training_tokens"],
             "corpora": ",".join(v["corpora"]) if isinstance(v.get("corpora", "all"), list) else "all",
             **{m: v["heldout"][m] for m in ("l0", "explained_variance", "mse", "dead_share")},
             "dead-latent loss steps": _fired(v.get("dead_latent_loss")),
             "minutes": v["train_seconds"] / 60} for k, v in card["saes"].items()]
    if rows:
        lines += ["Every SAE reads a `hook_resid_pre`, trained with sae_lens's `LanguageModelSAETrainingRunner`; "
                  "measured on held-out text of every corpus at its own context size with sae_lens's own evals "
                  "(special tokens left out; `mse` is the mean of ||x - x_hat||^2 summed over dimensions, "
                  "`explained_variance` is 1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2). sae_lens stores BatchTopK "
                  "SAEs for inference as JumpReLU SAEs (a threshold per feature). `dead_share` is the share of "
                  "latents that never fire on that text. A latent silent for `dead_window_tokens` training tokens "
                  "counts as dead during training, and sae_lens's dead-latent loss (TopK and BatchTopK: the "
                  "auxiliary reconstruction loss; JumpReLU: the pre-activation loss) pushes it back: "
                  "`dead-latent loss steps` counts the steps where that loss was non-zero.", "",
                  pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"), ""]
        over = {k: v for k, v in card["saes"].items() if v["heldout"]["dead_share"] > DEAD_SHARE_TARGET}
        lines += [f"Above the target of {DEAD_SHARE_TARGET:.0%} dead: " + (", ".join(over) if over else "none") + ".", ""]
        lines += [f"- {k}: {_why_dead(v)}" for k, v in over.items()] + ([""] if over else [])
    lines += [f"Artifacts: {card['artifact_mb']:.1f} MB (weights stored in float16, loaded as float32).", ""]
    return "\n".join(lines)


def gpt2pos_sections(card: dict) -> list[str]:
    """Return the GPT-2-geometry organism's own card sections: the projection, the check against GPT-2's geometry,
    the norms beside the first organism's, and the held-out loss beside the first organism's."""
    proj, check, w, w1 = card["wpos_projection"], card["gpt2_check"], card["wpos"], card["first_organism"]["wpos"]
    geo = pd.DataFrame({"this organism": check["organism"], "GPT-2 small": check["gpt2"]}).T
    own = pd.DataFrame(card["heldout"]).set_index("corpus")
    first = pd.DataFrame(card["first_organism"]["heldout"]).set_index("corpus")
    loss = pd.DataFrame({"heldout tokens": own["heldout_tokens"], "loss": own["loss"],
                         "first organism's loss": first["loss"], "first organism's tokens": first["heldout_tokens"],
                         "unigram": own["unigram_loss"]}).reset_index()
    return [
        "## W_pos: GPT-2 small's, projected", "",
        f"W_pos is GPT-2 small's positional embedding (all 1,024 rows, from possae's evaluation pack), projected on the "
        f"top {proj['directions']} principal directions of its centred rows {proj['rows']} (coordinates in those "
        f"directions), and frozen: no step of training changed it. The projection keeps {proj['variance_kept']:.2%} of "
        f"those rows' variance and {proj['norm_kept']:.2%} of the norm of all rows (row 0, the BOS position, keeps "
        f"{proj['row0_norm_kept']:.1%} of its norm).", "",
        f"Geometry of rows 1..1023 against GPT-2's (passes when the top-3 share and the adjacent cosine are within "
        f"{GEOMETRY_TOLERANCE} and the turns within {TURNS_TOLERANCE}): " + ("**passes**." if check["passes"] else "**fails**."), "",
        geo.to_markdown(floatfmt=".4f"), "",
        f"Mean row norm of W_pos (rows 1..) over W_E's: {w['wpos_over_we_norm']:.3f} here, {w1['wpos_over_we_norm']:.3f} "
        f"in the first organism (whose W_pos winds {w1['turns']:.2f} turns).", "",
        "## Held-out loss beside the first organism's", "",
        "Nats per token, every position scored, each model in windows of its own n_ctx + 1 tokens (so the two "
        "models' samples differ in window length and count: tokens are listed).", "",
        loss.to_markdown(index=False, floatfmt=".3f"), "",
        f"Mean over the corpora: {own['loss'].mean():.3f} here, {first['loss'].mean():.3f} for the first organism.", "",
    ]


def _why_dead(sae: dict) -> str:
    """Return what the record says about an SAE with too many dead latents."""
    d = sae.get("dead_latent_loss")
    share = f"{sae['heldout']['dead_share']:.1%} of its latents never fire on the held-out text"
    if not d or not d["steps_recorded"]:
        return f"{share}; its architecture has no dead-latent loss in sae_lens."
    if not d["steps_fired"]:
        return f"{share}; its dead-latent loss never fired (window {sae.get('dead_window_tokens')} tokens)."
    text = (f"{share}, although its dead-latent loss fired on {d['steps_fired']} of {d['steps_recorded']} steps "
            f"(from step {d['first_fired_step']}, mean value {d['mean_when_fired']:.2g} when it fired).")
    if sae["architecture"] == "jumprelu":
        text += (" That loss is sae_lens's pre-activation loss at Anthropic's coefficient (3e-6): at this scale it stays "
                 "small and does not bring the latents back within the run; a larger coefficient or more tokens are "
                 "the next things to try.")
    return text


def _fired(d: dict | None) -> str:
    """Return 'fired/recorded' for a dead-latent-loss summary, or '' where the architecture has none."""
    return f"{d['steps_fired']}/{d['steps_recorded']}" if d and d["steps_recorded"] else ""


def write_model_card(recipe: OrganismRecipe = OrganismRecipe(), device: str | None = None, folder: Path = ARTIFACTS,
                     work_dir: Path | None = None) -> Path:
    """Measure and write model_card.json and MODEL_CARD.md into the artifacts folder; return the markdown path."""
    card = collect_model_card(recipe, device or "cpu", folder, work_dir)
    (folder / CARD_JSON).write_text(json.dumps(card, indent=1))
    (folder / CARD_MD).write_text(card_markdown(card))
    return folder / CARD_MD

"""The setup chapter's computation: the model and SAE under study, the SAE's quality, and W_pos's geometry."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from possae.heldout import heldout_windows
from possae.sae_files import ORGANISMS, OTHER_ORGANISM
from possae.hooks import sae_context_size, sae_hook
from possae.metrics import sae_quality
from possae.params import Layer0Params, ParameterError
from possae.wpos import last_row, load_gpt2_wpos, pc_winding, winding_word, wpos_geometry

GPT2_SAE_CONTEXT = 128  # context_size of the gpt2-small-res-jb SAEs (their cfg.json on the hub)
LOSS_WINDOWS = 256  # windows for the spliced loss (it runs the whole model four times per window)
QUALITY_COLUMNS = {"l0": "L0", "explained_variance": "explained variance", "mse": "MSE", "dead_share": "dead share",
                   "ce_loss_without_sae": "CE, clean", "ce_loss_with_sae": "CE, SAE spliced in",
                   "ce_loss_score": "CE loss recovered"}


@dataclass(frozen=True)
class SetupParams(Layer0Params):
    """Parameters of the setup chapter."""

    n_heldout_tokens: int = 16384  # held-out tokens per corpus for the SAE's quality figures
    gpt2_wpos_path: str | None = None  # GPT-2 small's W_pos as .npy; None: the copy in possae's evaluation pack

    def validate(self) -> None:
        """Raise ParameterError on a sample too small to hold a window."""
        if self.n_heldout_tokens < 2:
            raise ParameterError(f"n_heldout_tokens must be >= 2; got {self.n_heldout_tokens}.")


def quality_on_heldout(model, sae, n_heldout_tokens: int) -> dict[str, float]:
    """Return sae_lens's quality metrics of the SAE on held-out windows of its training context (the book's one sample;
    the spliced loss on LOSS_WINDOWS of its windows, spread evenly over the corpora)."""
    context = sae_context_size(sae, model.cfg.n_ctx)
    return sae_quality(model, sae, heldout_windows(model.tokenizer, context, n_heldout_tokens),
                       loss_windows=LOSS_WINDOWS)


GEOMETRY_COLUMNS = {"top3_share": "top-3 PC share", "adjacent_cosine": "adjacent cosine", "turns": "turns (PC1-PC2)",
                    "pc1_crossings": "PC1 zero crossings", "pc2_crossings": "PC2 zero crossings",
                    "period_rows": "period (rows)"}


def geometry_frame(W_pos: Float[Tensor, "n_ctx d_model"], context_size: int, label: str) -> pd.DataFrame:
    """Return W_pos's top-3 share, adjacent cosine and winding (pc_winding) over rows 1..C-1 and 1..n_ctx-1, one row each."""
    ends = sorted({context_size, W_pos.shape[0]})
    return pd.DataFrame({f"{label} rows 1..{e - 1}": {**wpos_geometry(W_pos, 1, e), **pc_winding(W_pos[1:e], 2)}
                         for e in ends}).T.rename(columns=GEOMETRY_COLUMNS)[list(GEOMETRY_COLUMNS.values())]


@dataclass
class SetupResult:
    """Everything the setup chapter shows."""

    config: pd.DataFrame  # one column: the model's and the SAE's facts
    quality: dict[str, float]  # sae_lens's evals on held-out text
    W_pos: Float[Tensor, "n_ctx d_model"]
    geometry: pd.DataFrame  # this model's W_pos, GPT-2 small's and the other organism's, rows 1..C-1 and 1..n_ctx-1
    gpt2_W_pos: Float[Tensor, "1024 768"]
    other_W_pos: Float[Tensor, "n_other d_other"] | None  # the other organism's W_pos (the comparison), None off the organisms
    other_name: str | None
    last_row: dict[str, float]
    context_size: int
    card: dict | None  # the organism's model card when the model is the organism, else None

    def card_items(self) -> list:
        """Return what the model card section displays: a note, the loss figure, corpora and stages (none off the organism)."""
        if self.card is None:
            return []
        from IPython.display import Markdown

        from possae.figures.setup import heldout_loss_figure
        from possae.organism.card import organism_training_note, stages_frame

        stages = stages_frame(self.card)[["stage", "trained", "tokens", "epochs", "positions scored", "seconds", "device"]]
        return [heldout_loss_figure(pd.DataFrame(self.card["heldout"])),
                pd.DataFrame(self.card["data"]["corpora"]).drop(columns="files").style.hide(axis="index"),
                Markdown(organism_training_note(self.card)),
                stages.style.format({"tokens": "{:,}", "epochs": "{:.2f}", "seconds": "{:.0f}"}).hide(axis="index")]

    def geometry_table(self):
        """Return the geometry frame styled: shares and cosines to 3 places, turns to 2, crossings whole, periods to 1."""
        return self.geometry.style.format({c: "{:.3f}" for c in list(GEOMETRY_COLUMNS.values())[:2]}
                                          | {GEOMETRY_COLUMNS["turns"]: "{:.2f}", GEOMETRY_COLUMNS["period_rows"]: "{:.1f}",
                                             GEOMETRY_COLUMNS["pc1_crossings"]: "{:.0f}", GEOMETRY_COLUMNS["pc2_crossings"]: "{:.0f}"})

    def last_row_sentence(self) -> str:
        """Return what the last row's norm means here: trained by possae's trainer, or GPT-2's own row kept frozen."""
        if self.card is None or "gpt2_check" not in self.card:
            return ("possae's trainer feeds windows of n_ctx + 1 tokens, so every position is scored, and the last row "
                    "should look like its neighbours.")
        g = last_row(self.gpt2_W_pos)
        return (f"This model's W_pos is GPT-2 small's, frozen, so its last row is GPT-2's own W_pos[{self.gpt2_W_pos.shape[0] - 1}] "
                f"projected: in GPT-2 itself that row has norm {g['norm']:.3f} against {g['previous_norm']:.3f} for its "
                f"neighbour (cosine {g['cosine_to_previous']:.3f}). A conjecture, not tested here: GPT-2's trainer scored "
                "only n_ctx - 1 positions, so its last row kept a value near its initialisation.")

    def other_sentence(self) -> str:
        """Return the sentence that sets this model's W_pos beside the other organism's (or says there is none)."""
        if self.other_W_pos is None:
            return "No organism is set beside this model: it is neither of possae's organisms."
        return (f"The table also holds the other organism, {self.other_name}, whose learned W_pos is "
                f"{winding_word(float(self.geometry.loc[f'{self.other_name} rows 1..{self.other_W_pos.shape[0] - 1}', 'turns (PC1-PC2)']))} "
                f"over its {self.other_W_pos.shape[0]} rows.")

    def card_sentence(self) -> str:
        """Return the sentence introducing the model card section."""
        if self.card is None:
            return (f"The model here, {self.config.loc['model', '']}, is not the organism: it has no possae model card; "
                    "see its own documentation.")
        return ("Where the organism's training data came from, its held-out loss against a unigram model, and how its "
                "language model was trained:")

    def quality_table(self) -> pd.DataFrame:
        """Return the quality metrics as one labelled column, formatted."""
        fmt = {"explained_variance": "{:.1%}", "dead_share": "{:.1%}", "ce_loss_score": "{:.1%}", "l0": "{:.1f}"}
        return pd.DataFrame({"": {label: fmt.get(k, "{:.3f}").format(self.quality[k])
                                  for k, label in QUALITY_COLUMNS.items() if k in self.quality}})

    def glued(self) -> dict[str, object]:
        """Return the values the prose cites."""
        own = self.geometry.loc[f"{self.config.loc['model', '']} rows 1..{self.W_pos.shape[0] - 1}"]
        gpt2 = self.geometry.loc[f"GPT-2 small rows 1..{GPT2_SAE_CONTEXT - 1}"]
        gpt2_all = self.geometry.loc[f"GPT-2 small rows 1..{self.gpt2_W_pos.shape[0] - 1}"]
        other = {}
        if self.other_W_pos is not None:
            row = self.geometry.loc[f"{self.other_name} rows 1..{self.other_W_pos.shape[0] - 1}"]
            other = {"other_model": self.other_name, "other_turns": float(row["turns (PC1-PC2)"]),
                     "other_n_ctx": self.other_W_pos.shape[0], "other_shape": winding_word(float(row["turns (PC1-PC2)"]))}
        turns = float(own["turns (PC1-PC2)"])
        return {**other,
            "turns": turns, "shape": winding_word(turns), "gpt2_turns": float(gpt2_all["turns (PC1-PC2)"]),
            "gpt2_shape": winding_word(float(gpt2_all["turns (PC1-PC2)"])),
            "other_sentence": self.other_sentence(), "last_row_sentence": self.last_row_sentence(),
            "l0": self.quality["l0"], "explained_variance": self.quality["explained_variance"],
            "dead_share": self.quality["dead_share"], "heldout_tokens": self.quality["tokens"],
            "ce_clean": self.quality["ce_loss_without_sae"], "ce_spliced": self.quality["ce_loss_with_sae"],
            "ce_score": self.quality["ce_loss_score"], "ce_tokens": self.quality["loss_tokens"],
            "setup_context": self.context_size, "setup_model": str(self.config.loc["model", ""]),
            "setup_n_ctx": self.W_pos.shape[0], "top3": float(own["top-3 PC share"]),
            "adjcos": float(own["adjacent cosine"]), "gpt2_context_last": GPT2_SAE_CONTEXT - 1,
            "gpt2_top3_ctx": float(gpt2["top-3 PC share"]), "card_sentence": self.card_sentence(),
            **{f"last_{k}": v for k, v in self.last_row.items()},
        }


def analyze(model, sae, params: SetupParams) -> SetupResult:
    """Return the setup chapter's result: facts, sae_lens quality on held-out text, W_pos geometry beside GPT-2's."""
    n_ctx = model.cfg.n_ctx
    context = sae_context_size(sae, n_ctx)
    config = pd.DataFrame({"": {
        "model": model.cfg.model_name, "layers": model.cfg.n_layers, "d_model": model.cfg.d_model, "n_ctx": n_ctx,
        "d_vocab": model.cfg.d_vocab, "SAE": " / ".join(filter(None, (params.sae_release, params.sae_id))),
        "architecture": sae.cfg.architecture(), "hook": sae_hook(sae), "d_sae": sae.cfg.d_sae,
        "SAE context size": context}})
    W_pos = model.W_pos.detach().cpu()
    gpt2 = load_gpt2_wpos(params.gpt2_wpos_path)
    frames = [geometry_frame(W_pos, context, model.cfg.model_name), geometry_frame(gpt2, GPT2_SAE_CONTEXT, "GPT-2 small")]
    from possae.loaders import MODEL_NAMES, load_model

    organism = MODEL_NAMES.get(model.cfg.model_name)  # which of possae's organisms the model is (None: another model)
    other_name = OTHER_ORGANISM.get(organism)
    other = None
    if other_name is not None:
        other_model = load_model(other_name, device="cpu")
        other = other_model.W_pos.detach()
        frames.append(geometry_frame(other, other_model.cfg.n_ctx // 4, other_model.cfg.model_name))
        other_name = other_model.cfg.model_name
    with torch.no_grad():
        quality = quality_on_heldout(model, sae, params.n_heldout_tokens)
    card = None
    if organism in ORGANISMS:
        from possae.organism.card import read_model_card

        card = read_model_card(ORGANISMS[organism])
    return SetupResult(config, quality, W_pos, pd.concat(frames), gpt2, other, other_name, last_row(W_pos), context, card)

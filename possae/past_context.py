"""Past the training context, beyond the two studies: the loss with the SAE spliced in per position (the raw SAE and
each fix), the fine-tuning fix (relu-short continued on full contexts), and a rotary control (the organism's rotary
twin, whose SAEs see no positional embedding in the residual stream).

Every error here is the length chapter's: `possae.length.reconstructions` builds the SAE's output and fixes (a)-(d),
`possae.length.error_summary` pools nMSE inside the SAE's context (positions 1..C-1) and past it (C..n_ctx-1).
The loss at position p is the cross-entropy of the token at p + 1 given the window up to p; "spliced" replaces the
layer-0 input (or the SAE's hook) at every position of the window by the method's reconstruction, as sae_lens's
spliced loss does, so the loss at p also carries the errors at the earlier positions it attends to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor

from possae.hooks import LAYER0_INPUT, hook_layer, in_context_positions, require_layer0, sae_context_size, sae_hook, sae_layer
from possae.length import (
    CONTROL_LABEL,
    FIX_LABELS,
    RESTORE_FACTOR,
    SAE_LABEL,
    ErrorSummary,
    LengthFixes,
    error_summary,
    fmt,
    length_fixes,
    reconstructions,
    sae_reconstruct,
    short_context,
    span,
    token_tables,
)
from possae.intervals import N_BLOCKS, block_of, check, check_display, check_sentence, check_table, filled_blocks
from possae.metrics import PositionSums, next_token_ce, reconstruction_sums, windows_per_batch
from possae.organism.recipe import SAERecipe
from possae.params import ParameterError, SubjectParams
from possae.progress import tqdm
from possae.thresholds import SAME_BAND
from possae.tokenizer import special_token_ids

CLEAN = "clean"  # the model's own loss, nothing spliced
_DEFAULT_WARM_UP = SAERecipe.warm_up_share  # what a recipe stored before warm_up_share existed used
ROTARY_LABEL, ABSOLUTE_LABEL = "rotary twin", "learned absolute (the organism)"


@dataclass(frozen=True)
class PastContextParams(SubjectParams):
    """The past-context chapter's parameters."""

    model_name: str = "organism-gpt2pos"
    sae_release: str = "organism-gpt2pos"
    control_sae_id: str | None = "relu-full"
    finetune_sae_ids: tuple[str, ...] = ("relu-short-ft25k", "relu-short-ft100k", "relu-short-ft400k")
    relu_sae_ids: tuple[str, ...] = ("relu-short", "relu-short-L1", "relu-short-L2", "relu-short-L3")
    rotary_release: str | None = "organism-gpt2pos-rotary"
    rotary_sae_ids: tuple[str, ...] = ("relu-short", "relu-short-L1", "relu-short-L2", "relu-short-L3")
    n_heldout_tokens: int = 2048

    def validate(self) -> None:
        """Raise ParameterError without held-out tokens, or with a fine-tuned id whose budget is unknown."""
        if self.n_heldout_tokens < 1:
            raise ParameterError(f"n_heldout_tokens must be >= 1; got {self.n_heldout_tokens}.")
        if self.sae_release in ("organism", "organism-gpt2pos"):
            from possae.organism.recipe import FINETUNE_BUDGETS

            unknown = [i for i in self.finetune_sae_ids if i not in FINETUNE_BUDGETS]
            if unknown:
                raise ParameterError(f"finetune_sae_ids {unknown} are not fine-tuned SAEs of the organism; "
                                     f"those are {', '.join(FINETUNE_BUDGETS)}.")


def finetune_label(tokens: int) -> str:
    """Return the label of relu-short fine-tuned on `tokens` full-context tokens, e.g. 'fine-tuned 100k'."""
    return f"fine-tuned {tokens // 1000:,}k"


# ----------------------------------------------------------------------------------------------
# One pass: reconstruction errors and the spliced loss of every method, per position
# ----------------------------------------------------------------------------------------------


def spliced_ce(model, tokens: Int[Tensor, "batch pos"], targets: Int[Tensor, "batch pos"], hook: str,
               replacement: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos"]:
    """Return the next-token cross-entropy with the activation at `hook` replaced by `replacement` at every position."""
    def put(act, hook):  # noqa: ARG001 (transformer_lens passes the hook)
        return replacement.to(act.device, act.dtype).view_as(act)

    logits = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=[(hook, put)])
    return next_token_ce(logits, targets)


@torch.no_grad()
def splice_position_sums(model, sae: SAE, windows: Int[Tensor, "n_windows pos_plus_1"], fixes: LengthFixes | None = None,
                         control: SAE | None = None, finetuned: dict[str, SAE] | None = None,
                         batch_size: int | None = None, progress: bool | None = None) -> PositionSums:
    """Return PositionSums over the layer-0 input of windows of n + 1 tokens (the model reads the first n): x, x2,
    sse:<method> and ce:<method> (next-token loss with that method's reconstruction spliced in), ce:clean, for the
    SAE, each fix, the control and each fine-tuned SAE, and l0:<label> (active features) of the SAE and each
    fine-tuned SAE. Inputs whose token is special (BOS, EOS) are left out. batch_size: windows per batch; None:
    metrics.windows_per_batch."""
    require_layer0(sae, "splice_position_sums")
    tokens, targets = windows[:, :-1], windows[:, 1:]
    n = tokens.shape[1]
    if n > model.cfg.n_ctx:
        raise ValueError(f"windows of {n} + 1 tokens: the model reads at most n_ctx = {model.cfg.n_ctx}.")
    batch_size = batch_size or windows_per_batch(model, n)
    keep = ~torch.isin(tokens, torch.tensor(special_token_ids(model.tokenizer), dtype=tokens.dtype))
    tables = token_tables(sae, model.W_E, model.W_pos, tokens, fixes.context_size) if fixes is not None else None
    sums = PositionSums.empty(n, N_BLOCKS)
    for i in tqdm(range(0, len(tokens), batch_size), desc="spliced loss", delay=2.0, leave=False,
                  disable=progress is False):
        tok, tgt, k = tokens[i : i + batch_size], targets[i : i + batch_size], keep[i : i + batch_size].flatten()
        logits, cache = model.run_with_cache(tok.to(model.cfg.device), names_filter=LAYER0_INPUT)
        x = cache[LAYER0_INPUT]
        pos = torch.arange(n).repeat(len(tok))
        recons = reconstructions(x.flatten(0, 1), tok.flatten(), pos, sae, model.W_pos, fixes, tables, control)
        active = {}
        for label, s in {SAE_LABEL: sae, **(finetuned or {})}.items():
            f = s.encode(x.flatten(0, 1).to(s.W_enc.device, s.W_enc.dtype))
            active[f"l0:{label}"] = (f > 0).sum(-1, dtype=torch.int32)
            if label != SAE_LABEL:
                recons[label] = s.decode(f)
        values = {**reconstruction_sums(x.flatten(0, 1).to(sae.W_enc.device, sae.W_enc.dtype), recons), **active}
        values[f"ce:{CLEAN}"] = next_token_ce(logits, tgt).flatten()
        for label, x_hat in recons.items():
            values[f"ce:{label}"] = spliced_ce(model, tok, tgt, LAYER0_INPUT, x_hat.view_as(x)).flatten()
        sums.add(pos[k], block_of(i // batch_size), **{name: v[k.to(v.device)] for name, v in values.items()})
    return sums


def loss_methods(sums: PositionSums) -> list[str]:
    """Return the spliced methods a PositionSums holds (not the clean model), in the order they were added."""
    return [k.removeprefix("ce:") for k in sums.totals if k.startswith("ce:") and k != f"ce:{CLEAN}"]


@dataclass(frozen=True)
class LossSummary:
    """One method's mean increase in next-token loss (nats) over the clean model, inside the context and past it."""

    in_context: float
    past: float


def loss_summary(sums: PositionSums, method: str, context_size: int) -> LossSummary:
    """Return the mean of (spliced - clean) loss over the inputs at positions 1..C-1 and at C.. (input-weighted)."""
    inside = in_context_positions(context_size, sums.n_pos)
    delta = sums.totals[f"ce:{method}"] - sums.totals[f"ce:{CLEAN}"]

    def mean(first: int, last: int | None) -> float:
        m = sums.mask(first, last)
        return float(delta[m].sum() / sums.n[m].sum())

    return LossSummary(mean(inside.start, inside.stop), mean(context_size, None))


def loss_curves(sums: PositionSums) -> pd.DataFrame:
    """Return one row per (method, position with inputs): the clean loss and the spliced loss's increase over it."""
    seen = sums.n > 0
    positions = torch.arange(sums.n_pos)[seen].numpy()
    clean = sums.mean(f"ce:{CLEAN}")[seen]
    return pd.concat([pd.DataFrame({
        "method": m, "position": positions, "inputs": sums.n[seen].numpy(), "clean_loss": clean.numpy(),
        "delta_loss": (sums.mean(f"ce:{m}")[seen] - clean).numpy(),
    }) for m in loss_methods(sums)], ignore_index=True)


# ----------------------------------------------------------------------------------------------
# Reconstruction error per position at any layer (the rotary control)
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def layer_position_sums(model, saes: dict[str, SAE], tokens: Int[Tensor, "n_windows pos"],
                        batch_size: int | None = None, progress: bool | None = None) -> dict[str, PositionSums]:
    """Return per SAE label a PositionSums with x, x2 (its own hook's input) and sse:SAE over windows of tokens,
    special-token inputs left out; one forward pass per batch, run up to the last block any SAE reads.
    batch_size: windows per batch; None: metrics.windows_per_batch."""
    hooks = {label: sae_hook(sae) for label, sae in saes.items()}
    missing = sorted({h for h in hooks.values() if h not in model.hook_dict})
    if missing:
        raise ValueError(f"hooks {missing} are not in model {model.cfg.model_name!r}.")
    stop = min(model.cfg.n_layers, max(hook_layer(h) for h in hooks.values()) + 1)
    n = tokens.shape[1]
    batch_size = batch_size or windows_per_batch(model, n)
    keep = ~torch.isin(tokens, torch.tensor(special_token_ids(model.tokenizer), dtype=tokens.dtype))
    sums = {label: PositionSums.empty(n, N_BLOCKS) for label in saes}
    for i in tqdm(range(0, len(tokens), batch_size), desc=f"errors at {len(set(hooks.values()))} hooks", delay=2.0,
                  leave=False, disable=progress is False):
        tok, k = tokens[i : i + batch_size], keep[i : i + batch_size].flatten()
        _, cache = model.run_with_cache(tok.to(model.cfg.device), names_filter=lambda name: name in hooks.values(),
                                        stop_at_layer=stop)
        pos = torch.arange(n).repeat(len(tok))[k]
        for label, sae in saes.items():
            x = cache[hooks[label]].flatten(0, 1).to(sae.W_enc.device, sae.W_enc.dtype)
            values = reconstruction_sums(x, {SAE_LABEL: sae_reconstruct(sae, x)})
            sums[label].add(pos, block_of(i // batch_size), **{name: v[k.to(v.device)] for name, v in values.items()})
    return sums


@dataclass(frozen=True)
class LayerErrors:
    """One SAE's errors at its layer, inside its context and past it, on one model."""

    model: str
    layer: int
    sae_id: str
    context_size: int
    summary: ErrorSummary
    sums: PositionSums | None = field(default=None, repr=False, compare=False)  # what the summary came from, in blocks


def layer_errors(model, model_label: str, saes: dict[str, SAE], tokens: Int[Tensor, "n_windows pos"],
                 progress: bool | None = None) -> tuple[list[LayerErrors], pd.DataFrame]:
    """Return each SAE's LayerErrors and its nMSE curve (model, layer, sae_id, position, nmse), SAEs at any layers."""
    from possae.length import error_curves

    for sae_id, sae in saes.items():
        C = sae_context_size(sae, model.cfg.n_ctx)
        if C >= model.cfg.n_ctx:
            raise ValueError(f"{model_label} SAE {sae_id!r} was trained on {C} >= n_ctx positions: nothing lies past "
                             "its context. Give SAEs trained on shorter contexts.")
    by_sae = layer_position_sums(model, saes, tokens, progress=progress)
    out, curves = [], []
    for sae_id, sae in saes.items():
        C, sums, layer = sae_context_size(sae, model.cfg.n_ctx), by_sae[sae_id], sae_layer(sae)
        out.append(LayerErrors(model_label, layer, sae_id, C, error_summary(sums, SAE_LABEL, C), sums))
        curves.append(error_curves(sums, C).assign(model=model_label, layer=layer, sae_id=sae_id))
    return out, pd.concat(curves, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# Tables and sentences
# ----------------------------------------------------------------------------------------------


def method_table(errors: dict[str, ErrorSummary], losses: dict[str, LossSummary], context_size: int,
                 n_ctx: int) -> pd.DataFrame:
    """Return the display table of each method's nMSE and loss increase inside and past the context."""
    inside, past = span(in_context_positions(context_size, n_ctx)), span(range(context_size, n_ctx))
    rows = {m: {f"nMSE, {inside}": fmt(errors[m].nmse_in), f"nMSE, {past}": fmt(errors[m].nmse_past),
                f"Δ loss (nats), {inside}": f"{losses[m].in_context:+.3f}",
                f"Δ loss (nats), {past}": f"{losses[m].past:+.3f}"} for m in losses}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def l0_summary(sums: PositionSums, label: str, context_size: int) -> tuple[float, float]:
    """Return an SAE's mean number of active features per input inside the context (1..C-1) and past it."""
    inside = in_context_positions(context_size, sums.n_pos)
    l0 = sums.totals[f"l0:{label}"]
    return tuple(float(l0[m].sum() / sums.n[m].sum()) for m in (sums.mask(inside.start, inside.stop), sums.mask(context_size)))


def finetune_frame(errors: dict[str, ErrorSummary], budgets: dict[str, int],
                   l0: dict[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """Return one row per fine-tuning budget (0: the SAE itself): tokens, nMSE and (given l0) L0 inside and past."""
    order = [(SAE_LABEL, 0)] + sorted(budgets.items(), key=lambda kv: kv[1])
    rows = [{"tokens": t, "label": label, "nmse_in": errors[label].nmse_in, "nmse_past": errors[label].nmse_past,
             **({"l0_in": l0[label][0], "l0_past": l0[label][1]} if l0 else {})} for label, t in order]
    return pd.DataFrame(rows)


def finetune_table(frame: pd.DataFrame, context_size: int, n_ctx: int) -> pd.DataFrame:
    """Return the display table of the fine-tuning budgets: nMSE and L0 inside and past the context."""
    inside, past = span(in_context_positions(context_size, n_ctx)), span(range(context_size, n_ctx))
    return pd.DataFrame({"fine-tuning tokens": [f"{int(t):,}" for t in frame.tokens],
                         f"nMSE, {inside}": frame.nmse_in.map(fmt), f"nMSE, {past}": frame.nmse_past.map(fmt),
                         f"L0, {inside}": frame.l0_in.map(lambda v: f"{v:,.1f}"),
                         f"L0, {past}": frame.l0_past.map(lambda v: f"{v:,.1f}")}).set_index("fine-tuning tokens")


def sweep_table(record: dict | None) -> pd.DataFrame:
    """Return the display table of a recorded fine-tuning sweep: each recipe's nMSE, added loss and the two verdict
    figures with their thresholds (empty without a record)."""
    if record is None:
        return pd.DataFrame()
    C, n = record["context_size"], record["n_ctx"]
    inside, past = span(in_context_positions(C, n)), span(range(C, n))
    rows = pd.DataFrame(record["rows"])
    return pd.DataFrame({
        "learning rate": rows["lr"].map(lambda v: f"{v:g}"), "warm-up": rows["warm_up_share"].map(lambda v: f"{v:.0%}"),
        f"nMSE, {inside}": rows["nmse_in"].map(fmt), f"nMSE, {past}": rows["nmse_past"].map(fmt),
        f"ΔCE, {inside}": rows["dce_in"].map(lambda v: f"{v:.3f}"), f"ΔCE, {past}": rows["dce_past"].map(lambda v: f"{v:.3f}"),
        f"past / own inside (break removed at ≤ {record['restore_factor']:g})": rows["break_ratio"].map(fmt),
        f"inside / SAE's inside (fidelity kept at ≤ {record['same_band']:g})": rows["fidelity_ratio"].map(fmt),
        "passes both": rows["passes_both"].map({True: "yes", False: "no"}),
        "dead latents (silent on these windows)": rows["dead_share"].map(lambda v: f"{v:.1%}"),
    }).set_index(["learning rate", "warm-up"])


def sweep_sentence(record: dict | None, finetune: pd.DataFrame) -> str:
    """Return what the recorded fine-tuning sweep found, which recipe is nearest to passing both verdicts, and how the
    shipped largest budget measures here against the sweep's record of the same recipe."""
    if record is None:
        return ("No fine-tuning sweep is recorded for this release (the sweep command records one for "
                "organism-gpt2pos only), so the recipe above is not compared with others.")
    rows = pd.DataFrame(record["rows"])
    best = rows.iloc[0]
    lrs = ", ".join(f"{v:g}" for v in sorted(rows["lr"].unique()))
    wus = " or ".join(f"{v:.0%}" for v in sorted(rows["warm_up_share"].unique()))
    n_pass = int(rows["passes_both"].sum())
    s = (f"The sweep fine-tuned the SAE on {int(best.tokens):,} tokens of full contexts at each learning rate ({lrs}) "
         f"and warm-up ({wus} of the steps), {len(rows)} recipes in all, and measured each on these held-out windows "
         f"({record['heldout_inputs']:,} inputs). "
         f"{f'{n_pass} of the {len(rows)} pass' if n_pass else f'None of the {len(rows)} passes'} both verdicts. "
         f"The nearest to both, "
         f"learning rate {best.lr:g} with warm-up over {best.warm_up_share:.0%} of the steps, leaves its error past the "
         f"context {fmt(best.break_ratio)} times its own inside (limit {record['restore_factor']:g}) and its error "
         f"inside {fmt(best.fidelity_ratio)} times the SAE's (limit {record['same_band']:g}), with "
         f"{best.dead_share:.1%} of its latents silent on these windows against the SAE's "
         f"{record['sae_dead_share']:.1%} (no verdict reads that share)")
    last = finetune.iloc[-1] if len(finetune) > 1 else None
    if last is not None and int(last.tokens) == int(best.tokens):
        s += (f"; the shipped fine-tuned SAEs use its recipe, and the {int(last.tokens):,}-token one measures "
              f"{fmt(last.nmse_in)} inside and {fmt(last.nmse_past)} past here, against the sweep's "
              f"{fmt(best.nmse_in)} and {fmt(best.nmse_past)}")
    return s + (". Two further arms are not run: keeping the optimiser state needs the first training's, "
                "which sae_lens's runner did not save, and mixing short and full windows needs windows of two "
                "lengths in one run, which the runner does not take.")


def rotary_table(rows: list[LayerErrors], n_ctx: int) -> pd.DataFrame:
    """Return the display table of every SAE of both models: layer, nMSE inside and past its context, and their ratio."""
    return pd.DataFrame([{"model": r.model, "layer": r.layer, "SAE": r.sae_id,
                          f"nMSE inside (1-{r.context_size - 1})": fmt(r.summary.nmse_in),
                          f"nMSE past ({r.context_size}-{n_ctx - 1})": fmt(r.summary.nmse_past),
                          "past / inside": fmt(r.summary.ratio)} for r in rows]).set_index(["model", "layer"])


def loss_sentence(raw: LossSummary, context_size: int, n_ctx: int) -> str:
    """Return the sentence on the raw SAE's spliced loss inside and past the context."""
    inside, past = span(in_context_positions(context_size, n_ctx)), span(range(context_size, n_ctx))
    head = (f"With the SAE spliced in at layer 0, the next-token loss rises by {raw.in_context:.3f} nats at positions "
            f"{inside} and by {raw.past:.3f} nats at positions {past}")
    if raw.past > RESTORE_FACTOR * max(raw.in_context, 1e-9):
        return head + f": {raw.past / max(raw.in_context, 1e-9):,.1f} times as much past the context as inside it."
    return head + ": past the context costs the model no more than inside it."


def best_fix_sentence(losses: dict[str, LossSummary]) -> str:
    """Return which method (the SAE or a fix) costs the least loss past the context, and by how much."""
    candidates = {m: s for m, s in losses.items() if m == SAE_LABEL or m in FIX_LABELS.values()}
    order = sorted(candidates, key=lambda m: candidates[m].past)
    best, raw = order[0], losses[SAE_LABEL]
    if best == SAE_LABEL:
        return "No fix costs less loss past the context than the raw SAE."
    return (f"Of the fixes, {best} costs the least past the context: {candidates[best].past:.3f} nats against the "
            f"raw SAE's {raw.past:.3f} (and {candidates[best].in_context:.3f} against {raw.in_context:.3f} inside).")


def moves(before: float, after: float, text=None) -> str:
    """Return 'falls from A to B', 'rises from A to B' or 'stays at A' (A, B written by `text`, default fmt)."""
    text = text or fmt
    if text(before) == text(after):
        return f"stays at {text(before)}"
    return f"{'falls' if after < before else 'rises'} from {text(before)} to {text(after)}"


def finetune_sentence(frame: pd.DataFrame, reference: ErrorSummary | None, context_size: int) -> str:
    """Return the sentence on what fine-tuning on full contexts does to nMSE (and L0) inside and past the context."""
    if len(frame) < 2:
        return "No fine-tuned SAE is given on this profile (finetune_sae_ids is empty), so the fix is not measured."
    first, last = frame.iloc[0], frame.iloc[-1]
    ratio = last.nmse_past / last.nmse_in  # the break, as the ledger judges it: past over the fine-tuned SAE's inside
    s = (f"After {int(last.tokens):,} tokens of fine-tuning on full contexts, nMSE past the context "
         f"{moves(first.nmse_past, last.nmse_past)}, and inside it {moves(first.nmse_in, last.nmse_in)}")
    if "l0_in" in frame:
        s += (f"; its L0 (active features per token) inside the context "
              f"{moves(first.l0_in, last.l0_in, lambda v: f'{v:.1f}')}, and past it "
              f"{moves(first.l0_past, last.l0_past, lambda v: f'{v:,.1f}')}")
    s += (f". Past the context its error is {fmt(ratio)} times its own inside, so the break "
          f"{'is' if ratio <= RESTORE_FACTOR else 'is not'} removed (within {RESTORE_FACTOR:g} times), and inside it is "
          f"{fmt(last.nmse_in / first.nmse_in)} times the SAE's before fine-tuning (fidelity kept within "
          f"{SAME_BAND:g} times: {'yes' if last.nmse_in <= SAME_BAND * first.nmse_in else 'no'}).")
    if reference is not None:
        s += (f" The SAE trained on full contexts from the start reaches {fmt(reference.nmse_past)} at positions "
              f"{context_size} and beyond.")
    return s


def ranking_sentence(errors: dict[str, ErrorSummary], losses: dict[str, LossSummary]) -> str:
    """Return how the methods rank past the context by loss and by nMSE, and Spearman's rank correlation of the two."""
    from scipy.stats import spearmanr

    methods = list(losses)
    if len({losses[m].past for m in methods}) == 1 or len({errors[m].nmse_past for m in methods}) == 1:
        return "Past the context the methods tie on loss or on nMSE: there is no ranking to compare."
    by_loss = sorted(methods, key=lambda m: losses[m].past)
    by_nmse = sorted(methods, key=lambda m: errors[m].nmse_past)
    if by_loss == by_nmse:
        return (f"Past the context the {len(methods)} methods rank the same by loss as by nMSE: the reconstruction "
                "error predicts what the model loses.")
    rho = spearmanr([losses[m].past for m in methods], [errors[m].nmse_past for m in methods]).statistic
    moved = [m for m in methods if by_loss.index(m) != by_nmse.index(m)]
    return (f"Past the context the ranking by loss differs from the ranking by nMSE (Spearman's rank correlation "
            f"{rho:.2f} over the {len(methods)} methods): {', '.join(moved)} change places. A smaller squared error "
            "does not always cost the model less.")


def rotary_setup_sentence(facts: dict[str, object]) -> str:
    """Return the sentence on how the rotary twin was trained, whether its budget matches the learned-absolute
    model's, and both held-out losses, or that there is none."""
    if not facts:
        return "possae trains a rotary twin for its organisms only."
    if not facts["tokens"]:
        return (f"This rotary model was given, not trained by possae. Its held-out loss is {facts['loss']:.3f} nats "
                f"against the learned-absolute model's {facts['absolute_loss']:.3f} on the same windows.")
    budget = ("the same recipe and the same tokens as the learned-absolute model, only the positions differ: the "
              "comparison is budget-matched" if facts["matched"] else
              f"possae's {facts['recipe']} recipe on {facts['tokens']:,} tokens, where the learned-absolute model's "
              f"recipe has {facts['absolute_tokens']:,}: the comparison is not budget-matched, and a weaker twin may "
              "write less position into its stream")
    return (f"Its language model was trained with {budget}. On the same windows its held-out loss is "
            f"{facts['loss']:.3f} nats, the learned-absolute model's {facts['absolute_loss']:.3f}.")


def _by_layer(rows: list[LayerErrors]) -> str:
    """Return the rows' past/inside ratios by layer, e.g. '166,215 (layer 0), 49.8 (layer 1)'."""
    return ", ".join(f"{fmt(r.summary.ratio)} (layer {r.layer})" for r in sorted(rows, key=lambda r: r.layer))


def _layers(layers: list[int]) -> str:
    """Return 'layer 2' or 'layers 0, 1 and 2'."""
    if len(layers) == 1:
        return f"layer {layers[0]}"
    return "layers " + ", ".join(map(str, layers[:-1])) + f" and {layers[-1]}"


def rotary_sentence(rows: list[LayerErrors], factor: float = RESTORE_FACTOR) -> str:
    """Return the sentence comparing, layer by layer, the past/inside error ratios of the learned-absolute model's
    SAEs with the rotary twin's, and which of them blow up (ratio above `factor`)."""
    rot = [r for r in rows if r.model == ROTARY_LABEL]
    ab = [r for r in rows if r.model == ABSOLUTE_LABEL]
    if not rot:
        return "This profile names no rotary model (rotary_release is None), so the rotary control is not run."
    s = (f"Past the context, nMSE is this many times its value inside: learned absolute {_by_layer(ab)}; rotary twin "
         f"{_by_layer(rot)}.")
    rot_up = [r.layer for r in sorted(rot, key=lambda r: r.layer) if r.summary.ratio > factor]
    ab_up = [r.layer for r in sorted(ab, key=lambda r: r.layer) if r.summary.ratio > factor]
    ab_ok = [r.layer for r in sorted(ab, key=lambda r: r.layer) if r.summary.ratio <= factor]
    if rot_up:
        s += f" The rotary twin's SAEs also degrade past their context (more than {factor:g} times) at {_layers(rot_up)}."
    else:
        s += f" None of the rotary twin's SAEs goes above {factor:g} times"
        s += (f", while the learned-absolute model's do at {_layers(ab_up)}" if ab_up else
              ", and neither do the learned-absolute model's: the control shows no difference")
        s += f" (not at {_layers(ab_ok)})." if ab_up and ab_ok else "."
    return s


# ----------------------------------------------------------------------------------------------
# The chapter's one call
# ----------------------------------------------------------------------------------------------


@dataclass
class PastContextResult:
    """Everything the past-context chapter shows: numbers for the prose, frames for figures and tables."""

    context_size: int
    n_ctx: int
    heldout_inputs: int
    errors: dict[str, ErrorSummary]  # method -> nMSE inside/past (SAE, fixes, control, fine-tuned)
    losses: dict[str, LossSummary]  # method -> loss increase inside/past
    clean_loss: dict[str, float]  # 'inside', 'past': the model's own mean loss there
    loss_curves: pd.DataFrame
    method_table: pd.DataFrame
    finetune: pd.DataFrame
    control_label: str | None
    layer_rows: list[LayerErrors] = field(default_factory=list)
    layer_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    rotary_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    rotary_facts: dict[str, object] = field(default_factory=dict)  # recipe, tokens, held-out loss of both models
    checks: pd.DataFrame = field(default_factory=lambda: check_table([]))  # verdict figures with their intervals
    n_heldout_tokens: int = 0  # held-out tokens per corpus the sample was cut from
    sweep: dict | None = None  # the release's recorded fine-tuning sweep (possae.organism.sweep), None without one
    finetune_recipe: dict = field(default_factory=dict)  # the last fine-tuned SAE's recorded recipe (training.json)

    def sweep_display(self):
        """Return the fine-tuning sweep's table, nearest to passing both verdicts first, for display (nothing without
        a recorded sweep: the sentence above says so)."""
        from IPython.display import Markdown

        return sweep_table(self.sweep) if self.sweep is not None else Markdown("")

    def check_display(self) -> pd.DataFrame:
        """Return the verdict figures, their intervals and thresholds, for display."""
        return check_display(self.checks)

    def finetune_table(self) -> pd.DataFrame:
        """Return the fine-tuning budgets' nMSE and L0 inside and past the context, for display."""
        return finetune_table(self.finetune, self.context_size, self.n_ctx)

    @property
    def control_nmse_past(self) -> float | None:
        """Return the full-context control's nMSE past the context (None without a control)."""
        return self.errors[self.control_label].nmse_past if self.control_label in self.errors else None

    def glued(self) -> dict[str, object]:
        """Return every value the prose cites, by glue name (prefix pc_)."""
        raw = self.losses[SAE_LABEL]
        v: dict[str, object] = {
            "pc_context": self.context_size, "pc_n_ctx": self.n_ctx, "pc_heldout_inputs": self.heldout_inputs,
            "pc_inside": span(in_context_positions(self.context_size, self.n_ctx)),
            "pc_past": span(range(self.context_size, self.n_ctx)),
            "pc_clean_in": self.clean_loss["inside"], "pc_clean_past": self.clean_loss["past"],
            "pc_loss_sae_in": raw.in_context, "pc_loss_sae_past": raw.past,
            "pc_loss_sentence": loss_sentence(raw, self.context_size, self.n_ctx),
            "pc_best_fix_sentence": best_fix_sentence(self.losses),
            "pc_sae_nmse_in": self.errors[SAE_LABEL].nmse_in, "pc_sae_nmse_past": self.errors[SAE_LABEL].nmse_past,
            "pc_finetune_sentence": finetune_sentence(self.finetune, self.errors.get(self.control_label or ""),
                                                      self.context_size),
            "pc_rotary_sentence": rotary_sentence(self.layer_rows),
            "pc_rotary_setup": rotary_setup_sentence(self.rotary_facts),
            "pc_ranking_sentence": ranking_sentence(self.errors, self.losses),
            "pc_restore_factor": RESTORE_FACTOR, "pc_n_heldout_tokens": self.n_heldout_tokens,
            "pc_check_sentence": check_sentence(self.checks, f"this sample ({self.heldout_inputs:,} inputs)"),
            "pc_sweep_sentence": sweep_sentence(self.sweep, self.finetune),
            "pc_ft_recipe": (f"learning rate {self.finetune_recipe['lr']:g}, warmed up over "
                             f"{self.finetune_recipe.get('warm_up_share', _DEFAULT_WARM_UP):.0%} of the steps"
                             if self.finetune_recipe else "the recipe recorded with the SAEs given"),
        }
        for k, label in FIX_LABELS.items():
            if label in self.losses:
                v[f"pc_loss_{k}_in"], v[f"pc_loss_{k}_past"] = self.losses[label].in_context, self.losses[label].past
        if self.control_label in self.errors:
            v["pc_full_nmse_past"] = self.errors[self.control_label].nmse_past
        last = self.finetune.iloc[-1]
        v.update(pc_ft_tokens_final=int(last.tokens), pc_ft_nmse_past_final=float(last.nmse_past),
                 pc_ft_nmse_in_final=float(last.nmse_in))
        # past/inside ratios at the layers where attention can write position into both models' streams (>= 1)
        rot = [r.summary.ratio for r in self.layer_rows if r.model == ROTARY_LABEL and r.layer >= 1]
        ab = [r.summary.ratio for r in self.layer_rows if r.model == ABSOLUTE_LABEL and r.layer >= 1]
        if rot and ab:
            v["pc_rot_ratio_max"], v["pc_abs_ratio_later_max"] = max(rot), max(ab)
        v.update({f"pc_rot_{k}": x for k, x in self.rotary_facts.items()})
        return v


def _trained_recipe(release: str, sae_ids) -> dict:
    """Return the recipe recorded beside the last of a local release's SAEs (its training.json; {} without one)."""
    from possae.sae_files import read_training, sae_folder

    if not sae_ids:
        return {}
    try:
        folder = sae_folder(release, sae_ids[-1])
        return read_training(folder)["recipe"] if folder is not None else {}
    except (OSError, ValueError, KeyError):
        return {}


def _recorded_sweep(params: PastContextParams) -> dict | None:
    """Return the fine-tuning sweep recorded for the params' release, when it is a shipped organism with one and the
    chapter runs on the sweep's sample (else None: its figures would not be this page's)."""
    from possae.sae_files import ORGANISMS, read_sweep

    if params.sae_release not in ORGANISMS or not params.finetune_sae_ids:
        return None
    record = read_sweep(ORGANISMS[params.sae_release])
    if record is None or record.get("n_heldout_tokens") != params.n_heldout_tokens:
        return None
    return record


def _finetuned(model, params: PastContextParams, device) -> dict[str, tuple[SAE, int]]:
    """Return {label: (SAE, tokens)} of the fine-tuned SAEs the params name, each checked to fit the model."""
    from possae.loaders import load_sae_for
    from possae.organism.recipe import FINETUNE_BUDGETS

    out = {}
    for sae_id in params.finetune_sae_ids:
        tokens = FINETUNE_BUDGETS[sae_id]
        out[finetune_label(tokens)] = (load_sae_for(model, params.sae_release, sae_id, device), tokens)
    return out


def _is_recipe(name: str, variant: str, stored: dict) -> bool:
    """Return whether a stored recipe (lm_training.json's) is the named recipe of an organism variant; a field the
    stored one predates counts as equal when the named recipe keeps its default."""
    import dataclasses

    from possae.organism.recipe import LMRecipe, lm_recipe

    try:
        r = lm_recipe(name, variant)
    except ValueError:  # e.g. the continue recipe, which frees a W_pos row, has no rotary form
        return False
    d = {**r.to_dict(), "betas": list(r.betas)}
    defaults = {f.name: f.default for f in dataclasses.fields(LMRecipe)}
    return all(stored.get(k, defaults[k]) == v for k, v in d.items()) and set(stored) <= set(d)


def rotary_facts(release: str, absolute: str) -> dict[str, object]:
    """Return what trained a shipped rotary twin and its learned-absolute model (recipe names and tokens, from the
    facts shipped beside each: lm_training.json; the first organism's is its recorded gpu recipe), and whether the
    two had the same recipe and tokens apart from the positions ('matched')."""
    from possae.organism.recipe import LM_RECIPES
    from possae.sae_files import GPT2POS, GPT2POS_ROTARY, ORGANISMS, organism_fix

    variants = {"organism-rotary": "rotary", GPT2POS_ROTARY: "gpt2-rotary", GPT2POS: "gpt2"}

    def facts(name: str) -> dict | None:
        path = ORGANISMS[name] / "lm_training.json"
        if name not in variants:
            return None
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing. {organism_fix('model', name)}")
        recipe = json.loads(path.read_text())["recipe"]
        label = next((n for n in LM_RECIPES if _is_recipe(n, variants[name], recipe)), "custom")
        return {"recipe": label, "tokens": int(recipe["train_tokens"]), "n_ctx": int(recipe["n_ctx"]), "raw": recipe}

    twin, ab = facts(release), facts(absolute)
    ab_tokens = ab["tokens"] if ab else LM_RECIPES["gpu"].train_tokens  # the first organism: its recorded recipe
    positional = ("positional_embedding_type", "wpos", "zero_init_wpos")
    matched = bool(ab) and {k: v for k, v in twin["raw"].items() if k not in positional} == \
        {k: v for k, v in ab["raw"].items() if k not in positional}
    return {"recipe": twin["recipe"], "tokens": twin["tokens"], "absolute_tokens": ab_tokens, "matched": matched}


def verdict_figures(sums: PositionSums, context_size: int, final: str | None, rows: list[LayerErrors],
                    block: int | None) -> dict[str, tuple[float, float]]:
    """Return {name: (figure, threshold)}, with one block of windows left out (none when block is None), for the
    figures the ledger's past-context verdicts compare with a threshold: the SAE's added loss past the context over
    inside (LOSS_FACTOR), the last fine-tuned SAE's nMSE past over its own inside (RESTORE_FACTOR: the break) and its
    inside over the SAE's inside (SAME_BAND: fidelity), and each layer >= 1 SAE's nMSE past over inside on both models (RESTORE_FACTOR)."""
    from possae.thresholds import LOSS_FACTOR, RESTORE_FACTOR, SAME_BAND

    s = sums.leave_out(block)
    loss = loss_summary(s, SAE_LABEL, context_size)
    own = error_summary(s, SAE_LABEL, context_size)
    out = {"SAE: added loss past / inside": (loss.past / loss.in_context, LOSS_FACTOR)}
    if final is not None:
        ft = error_summary(s, final, context_size)
        out |= {f"{final}: nMSE past / its own inside": (ft.nmse_past / ft.nmse_in, RESTORE_FACTOR),
                f"{final}: nMSE inside / SAE's inside": (ft.nmse_in / own.nmse_in, SAME_BAND)}
    for r in rows:
        if r.layer >= 1 and r.sums is not None:
            ratio = error_summary(r.sums.leave_out(block), SAE_LABEL, r.context_size).ratio
            out[f"{r.model} layer {r.layer}: nMSE past / inside"] = (ratio, RESTORE_FACTOR)
    return out


def verdict_checks(sums: PositionSums, context_size: int, final: str | None, rows: list[LayerErrors]) -> pd.DataFrame:
    """Return intervals.check of verdict_figures: each with its jackknife interval over blocks of windows and the
    threshold its verdict compares it with."""
    return check(lambda block: verdict_figures(sums, context_size, final, rows, block), filled_blocks(sums))


@torch.no_grad()
def analyze(model, sae: SAE, params: PastContextParams, control: SAE | None = None) -> PastContextResult:
    """Return the PastContextResult of a layer-0 SAE trained on a context shorter than the model's n_ctx."""
    from possae.heldout import heldout_windows
    from possae.layer0_stats import layer0_stats_from_model
    from possae.loaders import load_model, load_sae_for

    C, n_ctx = short_context(model, sae, "The past-context chapter"), model.cfg.n_ctx
    device = sae.W_enc.device
    fixes = length_fixes(layer0_stats_from_model(model, sae, progress=False), sae, model.W_E, C)
    finetuned = _finetuned(model, params, device)
    windows = heldout_windows(model.tokenizer, n_ctx + 1, params.n_heldout_tokens)
    sums = splice_position_sums(model, sae, windows, fixes, control, {k: s for k, (s, _) in finetuned.items()},
                                progress=False)
    methods = loss_methods(sums)
    errors = {m: error_summary(sums, m, C) for m in methods}
    losses = {m: loss_summary(sums, m, C) for m in methods}
    inside = in_context_positions(C, n_ctx)
    clean = sums.totals[f"ce:{CLEAN}"]
    clean_loss = {"inside": float(clean[sums.mask(inside.start, inside.stop)].sum() / sums.n[sums.mask(inside.start, inside.stop)].sum()),
                  "past": float(clean[sums.mask(C)].sum() / sums.n[sums.mask(C)].sum())}
    result = PastContextResult(
        context_size=C, n_ctx=n_ctx, heldout_inputs=int(sums.n.sum()), errors=errors, losses=losses,
        clean_loss=clean_loss, loss_curves=loss_curves(sums), method_table=method_table(errors, losses, C, n_ctx),
        finetune=finetune_frame(errors, {k: t for k, (_, t) in finetuned.items()},
                                {k: l0_summary(sums, k, C) for k in [SAE_LABEL, *finetuned]}),
        control_label=CONTROL_LABEL if control is not None else None, n_heldout_tokens=params.n_heldout_tokens,
        sweep=_recorded_sweep(params), finetune_recipe=_trained_recipe(params.sae_release, params.finetune_sae_ids),
    )
    final = str(result.finetune.iloc[-1].label) if finetuned else None
    if params.rotary_release is None:
        result.checks = verdict_checks(sums, C, final, [])
        return result
    tokens = heldout_windows(model.tokenizer, n_ctx, params.n_heldout_tokens)
    ab_rows, ab_curves = layer_errors(model, ABSOLUTE_LABEL, {i: load_sae_for(model, params.sae_release, i, device)
                                                              for i in params.relu_sae_ids}, tokens)
    twin = load_model(params.rotary_release, device=str(device))
    rot_rows, rot_curves = layer_errors(twin, ROTARY_LABEL, {i: load_sae_for(twin, params.rotary_release, i, device)
                                                             for i in params.rotary_sae_ids}, tokens)
    rows = ab_rows + rot_rows
    result.layer_rows, result.layer_curves = rows, pd.concat([ab_curves, rot_curves], ignore_index=True)
    result.rotary_table = rotary_table(rows, n_ctx)
    from possae.sae_files import ORGANISMS

    facts = rotary_facts(params.rotary_release, params.sae_release) if params.rotary_release in ORGANISMS else \
        {"recipe": "given", "tokens": 0, "absolute_tokens": 0, "matched": False}
    # both over the same inputs: special-token inputs left out, as splice_position_sums leaves them out of ce:clean
    result.rotary_facts = {**facts, "loss": _mean_loss(twin, windows),
                           "absolute_loss": float(clean.sum() / sums.n.sum())}
    result.checks = verdict_checks(sums, C, final, rows)
    return result


@torch.no_grad()
def _mean_loss(model, windows: Int[Tensor, "n_windows pos_plus_1"]) -> float:
    """Return a model's mean next-token loss (nats) over windows of n + 1 tokens, inputs that are special tokens (BOS,
    EOS) left out, as splice_position_sums leaves them out."""
    batch_size = windows_per_batch(model, windows.shape[1] - 1)
    special = torch.tensor(special_token_ids(model.tokenizer), dtype=windows.dtype)
    total, n = 0.0, 0
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size]
        keep = ~torch.isin(w[:, :-1], special)
        ce = next_token_ce(model(w[:, :-1].to(model.cfg.device)), w[:, 1:]).cpu()
        total, n = total + float(ce[keep].sum()), n + int(keep.sum())
    return total / n

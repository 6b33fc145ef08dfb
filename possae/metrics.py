"""Reconstruction measures and the one per-position accumulator.

Definitions used by every chapter (the same names as SAELens's evals):

* ``mse``: the mean over inputs of ``||x - x_hat||^2`` (summed over the d_in dimensions, as sae_lens reports it);
* ``explained_variance``: ``1 - sum ||x - x_hat||^2 / sum ||x - x_bar||^2`` over a set of inputs, ``x_bar`` their
  mean (sae_lens's ``ExplainedVarianceCalculator``);
* ``nmse``: ``1 - explained_variance``, i.e. the MSE over the inputs' total variance. Per position, the MSE at that
  position over the variance of a reference set of inputs (:func:`nmse_by_position`), so that the input-weighted
  mean of the curve over the reference positions is exactly the pooled nMSE there (:func:`pooled_nmse`).

SAE quality figures (L0, explained variance, MSE, dead share, loss with the SAE spliced in) come from sae_lens's own
evals (:func:`sae_quality`); possae's own code covers what they lack: per-position curves (:class:`PositionSums`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from possae.cache import cached
from possae.hooks import sae_hook

ZERO_VAR_RTOL = 1e-12  # a variance below this share of the second moment counts as zero


# Floats of logits one forward pass may hold. On a CPU the budget keeps a batch's large tensors (logits, SAE
# activations) near glibc's 32 MiB mmap threshold: larger ones are mapped afresh and page-faulted on every batch, which
# made the organism's oscillation passes 1.6 times slower at 16 windows than at 4 (benchmarks/bench_batching.py).
LOGITS_PER_BATCH = {"cpu": 1 << 23, "other": 1 << 27}  # 32 MiB on a CPU; 512 MiB on an accelerator


def windows_per_batch(model, n_pos: int, most: int = 16) -> int:
    """Return how many windows of n_pos tokens one forward pass takes: at most `most`, fewer when their logits
    (windows x n_pos x d_vocab floats) would pass LOGITS_PER_BATCH for the model's device (CPU: the organism 4,
    GPT-2 small at 1024 positions 1; GPU: 16 and 2)."""
    budget = LOGITS_PER_BATCH["cpu" if str(model.cfg.device or "cpu").startswith("cpu") else "other"]
    return max(1, min(most, budget // (n_pos * model.cfg.d_vocab_out)))


def next_token_ce(logits: Float[Tensor, "batch pos d_vocab"], targets: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos"]:
    """Return the cross-entropy (nats) of each target token under the logits at its position.

    The logits are scored as contiguous rows (cross_entropy over a transposed (batch, d_vocab, pos) view runs about
    2.5 times slower on a CPU); half-precision logits are scored in float32."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    flat = torch.nn.functional.cross_entropy(logits.flatten(0, -2), targets.to(logits.device).flatten(), reduction="none")
    return flat.view(targets.shape)


def next_token_ce_of(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos_minus_1"]:
    """Return next_token_ce(logits[:, :-1], tokens[:, 1:]) without copying the logits into a contiguous slice (a
    quarter of the time on a CPU): every row is scored, the last against a target cross_entropy ignores."""
    targets = torch.full_like(tokens, -100)  # cross_entropy's ignore_index: scored 0
    targets[:, :-1] = tokens[:, 1:]
    return next_token_ce(logits, targets)[:, :-1]


# ----------------------------------------------------------------------------------------------
# One per-position accumulator
# ----------------------------------------------------------------------------------------------


@dataclass
class PositionSums:
    """Per-position input counts and sums (float64, CPU) of named quantities, accumulated batch by batch; with parts,
    each batch also lands in one of several disjoint parts (blocks of windows), so that a statistic of the sums gets a
    leave-one-part-out interval (possae.intervals)."""

    n: Float[Tensor, " n_pos"]
    totals: dict[str, Tensor] = field(default_factory=dict)
    parts: list[PositionSums] = field(default_factory=list)

    @classmethod
    def empty(cls, n_pos: int, parts: int = 0) -> PositionSums:
        """Return zeroed sums over n_pos positions, with `parts` zeroed parts."""
        return cls(torch.zeros(n_pos, dtype=torch.float64), parts=[cls.empty(n_pos) for _ in range(parts)])

    @property
    def n_pos(self) -> int:
        """Return the number of positions."""
        return self.n.shape[0]

    def add(self, positions: Int[Tensor, " batch"], part: int | None = None,
            **values: Float[Tensor, "batch ..."]) -> PositionSums:
        """Return self after adding one batch: each input's position and its named values (one row per input), and,
        when `part` is given, adding it to that part too.

        Every call must carry the same names (the counts are shared).
        """
        pos = positions.long().cpu().reshape(-1)
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= self.n_pos):
            raise ValueError(f"positions must lie in 0..{self.n_pos - 1}; got {int(pos.min())}..{int(pos.max())}.")
        if self.totals and set(values) != set(self.totals):
            raise ValueError(f"every batch must carry the same quantities: {sorted(self.totals)} vs {sorted(values)}.")
        if part is not None and not 0 <= part < len(self.parts):
            raise ValueError(f"part {part} does not exist: these sums have {len(self.parts)} parts.")
        counts = torch.bincount(pos, minlength=self.n_pos).double()
        self.n += counts
        if part is not None:
            self.parts[part].n += counts
        for name, v in values.items():
            if v.shape[0] != pos.shape[0]:
                raise ValueError(f"{name}: {v.shape[0]} rows but {pos.shape[0]} positions.")
            v = v.detach().double()
            piece = torch.zeros(self.n_pos, *v.shape[1:], dtype=v.dtype, device=v.device).index_add_(0, pos.to(v.device), v).cpu()
            for target in (self, self.parts[part]) if part is not None else (self,):
                target.totals[name] = target.totals[name] + piece if name in target.totals else piece
        return self

    def add_windows(self, part: int | None = None, **values: Float[Tensor, "batch pos ..."]) -> PositionSums:
        """Return self after adding windows whose second axis is the position 0..pos-1 (to `part` too, if given)."""
        shapes = {v.shape[:2] for v in values.values()}
        if len(shapes) != 1:
            raise ValueError(f"every quantity needs the same (batch, pos) shape; got {sorted(shapes)}.")
        b, p = shapes.pop()
        if p > self.n_pos:
            raise ValueError(f"windows of {p} positions but the sums hold {self.n_pos}.")
        positions = torch.arange(p).repeat(b)
        return self.add(positions, part, **{k: v.flatten(0, 1) for k, v in values.items()})

    def leave_out(self, part: int | None) -> PositionSums:
        """Return the sums without one part (all of them, without parts, when part is None)."""
        if part is None:
            return PositionSums(self.n, self.totals)
        out = self.parts[part]
        return PositionSums(self.n - out.n, {k: v - out.totals.get(k, 0) for k, v in self.totals.items()})

    def mean(self, name: str) -> Float[Tensor, "n_pos ..."]:
        """Return the mean of a quantity at each position (NaN where no input was seen)."""
        n = self.n.reshape(-1, *([1] * (self.totals[name].ndim - 1)))
        return self.totals[name] / n

    def mask(self, first: int = 0, last: int | None = None) -> Bool[Tensor, " n_pos"]:
        """Return the mask of positions first..last-1 that hold at least one input."""
        m = torch.zeros(self.n_pos, dtype=torch.bool)
        m[first:last] = True
        return m & (self.n > 0)


# ----------------------------------------------------------------------------------------------
# Error measures over PositionSums holding x (sum of inputs), x2 (sum of ||x||^2) and sse:<name>
# ----------------------------------------------------------------------------------------------


def reconstruction_sums(x: Float[Tensor, "batch d_in"], recons: dict[str, Float[Tensor, "batch d_in"]]) -> dict[str, Tensor]:
    """Return the quantities the error measures need for one batch: x, x2 and sse:<method> per reconstruction."""
    x = x.detach()
    out = {"x": x, "x2": x.pow(2).sum(-1)}
    for name, x_hat in recons.items():
        out[f"sse:{name}"] = (x - x_hat.detach().to(x.device, x.dtype)).pow(2).sum(-1)
    return out


def total_variance(sums: PositionSums, where: Bool[Tensor, " n_pos"]) -> float:
    """Return the total variance (summed over dimensions, per input) of the inputs at the positions `where`."""
    n = float(sums.n[where].sum())
    if n == 0:
        raise ValueError("no inputs at the requested positions.")
    sx, sxx = sums.totals["x"][where].sum(0), float(sums.totals["x2"][where].sum())
    return (sxx - float(sx @ sx) / n) / n


def mse_by_position(sums: PositionSums, method: str) -> Float[Tensor, " n_pos"]:
    """Return the MSE (mean of ||x - x_hat||^2) of one reconstruction method at each position."""
    return sums.mean(f"sse:{method}")


def nmse_by_position(sums: PositionSums, method: str, reference: Bool[Tensor, " n_pos"]) -> Float[Tensor, " n_pos"]:
    """Return the MSE at each position over the total variance of the inputs at the reference positions."""
    return mse_by_position(sums, method) / total_variance(sums, reference)


def pooled_nmse(sums: PositionSums, method: str, where: Bool[Tensor, " n_pos"]) -> float:
    """Return 1 - explained variance of one method over all inputs at the positions `where` (sae_lens's definition)."""
    n = float(sums.n[where].sum())
    return float(sums.totals[f"sse:{method}"][where].sum()) / n / total_variance(sums, where)


def r2_pos(mean: Float[Tensor, "n_pos d"], var_within: Float[Tensor, "n_pos d"],
           weights: Float[Tensor, " n_pos"] | None = None) -> Float[Tensor, " d"]:
    """Return per unit the share of its variance explained by position, Var_p(E[f|p]) / Var(f) (0 where Var(f) = 0).

    ``mean`` and ``var_within`` are each unit's mean and variance at each position; positions are weighted by
    ``weights`` (their input counts; uniform when None), so that this is eta^2 = SS_between / SS_total.
    """
    w = torch.ones(mean.shape[0], dtype=mean.dtype) if weights is None else weights.to(mean.dtype)
    w = (w / w.sum())[:, None].to(mean.device)
    grand = (w * mean).sum(0)
    var_pos = (w * (mean - grand) ** 2).sum(0)
    var = var_pos + (w * var_within).sum(0)
    ok = var > ZERO_VAR_RTOL * (var + grand**2)
    return torch.where(ok, var_pos / torch.where(ok, var, torch.ones_like(var)), torch.zeros_like(var)).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# SAE quality, from sae_lens's evals
# ----------------------------------------------------------------------------------------------


def loss_subset(n_windows: int, loss_windows: int | None) -> Int[Tensor, " k"]:
    """Return the indices of `loss_windows` windows spread evenly over n_windows (every corpus of a concatenated
    sample gets its share), or all of them when None or when there are not more."""
    if not loss_windows or loss_windows >= n_windows:
        return torch.arange(n_windows)
    return torch.linspace(0, n_windows - 1, loss_windows).round().long()


class WindowStore:
    """The part of sae_lens's ActivationsStore its evals read (get_batch_tokens): fixed token windows, in order."""

    def __init__(self, tokens: Int[Tensor, "n_windows pos"], device: str | torch.device = "cpu"):
        self.tokens, self.device, self.next = tokens, device, 0

    def get_batch_tokens(self, batch_size: int | None = None, raise_at_epoch_end: bool = False) -> Int[Tensor, "b pos"]:
        """Return the next batch_size windows (cycling through them)."""
        n = len(self.tokens)
        idx = torch.arange(self.next, self.next + (batch_size or n)) % n
        self.next = int(idx[-1]) + 1
        return self.tokens[idx].to(self.device)


@torch.no_grad()
def sae_quality(model, sae, tokens: Int[Tensor, "n_windows pos"], batch_size: int = 16,
                spliced_loss: bool = True, loss_windows: int | None = None) -> dict[str, float]:
    """Return sae_lens's eval metrics of an SAE over every window of `tokens` (special tokens excluded, as sae_lens).

    Keys: tokens, l0, explained_variance, nmse, mse, dead_share and, with spliced_loss, ce_loss_without_sae,
    ce_loss_with_sae, ce_loss_with_ablation, ce_loss_score and loss_tokens, measured on
    `loss_windows` windows spread evenly over `tokens` (loss_subset; all when None: the spliced loss runs the whole
    model four times per window).
    """
    from sae_lens.evals import get_downstream_reconstruction_metrics, get_sparsity_and_variance_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    from possae.tokenizer import special_token_ids

    if sae_hook(sae) not in model.hook_dict:
        raise ValueError(f"SAE hook {sae_hook(sae)!r} is not a hook of model {model.cfg.model_name!r}.")
    ignore = special_token_ids(model.tokenizer)
    bs = max(d for d in range(1, min(batch_size, len(tokens)) + 1) if len(tokens) % d == 0)  # every window, once
    n_batches = len(tokens) // bs
    kept = int((~torch.isin(tokens, torch.tensor(ignore, dtype=tokens.dtype))).sum()) if ignore else tokens.numel()
    scaler = ActivationScaler()

    def variance() -> dict[str, float]:
        m, f = get_sparsity_and_variance_metrics(
            sae, model, WindowStore(tokens, model.cfg.device), scaler, n_batches=n_batches, compute_l2_norms=False,
            compute_sparsity_metrics=True, compute_variance_metrics=True, compute_featurewise_density_statistics=True,
            eval_batch_size_prompts=bs, model_kwargs={}, ignore_tokens=ignore)
        return {"tokens": int(kept), "l0": m["l0"], "explained_variance": m["explained_variance"],
                "nmse": 1.0 - m["explained_variance"], "mse": m["mse"],
                "dead_share": float((torch.tensor(f["feature_density"]) == 0).double().mean())}

    # each part is computed once per build for a given model, SAE and sample (possae.cache)
    out = cached("sae_variance", (model, sae, tokens, bs, ignore, str(model.cfg.device)), variance)
    if spliced_loss:
        sub = tokens[loss_subset(len(tokens), loss_windows)]
        bs = max(d for d in range(1, min(batch_size, len(sub)) + 1) if len(sub) % d == 0)

        def spliced() -> dict[str, float]:
            d = get_downstream_reconstruction_metrics(
                sae, model, WindowStore(sub, model.cfg.device), scaler, compute_kl=False, compute_ce_loss=True,
                n_batches=len(sub) // bs, eval_batch_size_prompts=bs, ignore_tokens=ignore)
            # no KL divergence: no page shows it, and torch.kl_div over the vocabulary cost as much as the passes
            return {k: d[k] for k in ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation",
                                      "ce_loss_score")}

        out = {**out, **cached("sae_spliced", (model, sae, sub, bs, ignore, str(model.cfg.device)), spliced)}
        out["loss_tokens"] = int((~torch.isin(sub, torch.tensor(ignore, dtype=sub.dtype))).sum()) if ignore else sub.numel()
    return out

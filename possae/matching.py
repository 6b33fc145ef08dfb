"""Feature matching between SAE dictionaries: each feature's best decoder (or encoder) cosine in another dictionary,
computed in row chunks that keep only the top-k values, the share matched above a threshold, the mean max cosine
similarity (MMCS), one-to-one matching (dense Hungarian for small pairs, a sparse solver certified optimal against
every pair for large ones), and groups of SAEs (datasets, seeds, widths, k, architectures,
layers) resolved against a release."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from possae.devices import default_device
from possae.hooks import act_name, hook_activations, hook_layer, in_context_positions, resid_pre, sae_context_size, sae_hook
from possae.params import ChapterParams, ParameterError
from possae.progress import tqdm
from possae.sae_files import hub_offline, sae_cached

THRESHOLD = 0.7  # the study's cosine threshold for "a feature has a match"
TOP_K = 4  # each feature's 1st..4th best cosines are kept
CHUNK_SIZE = 2048  # rows of the first dictionary per matmul: 2048 x 24,576 float32 is 200 MB
HUNGARIAN_MAX_FEATURES = 32_768  # one-to-one matching is skipped for pairs with a larger dictionary
# one-to-one matching runs dense (the full float64 matrix: 32 MB per 2048^2) up to this many pairs, sparse above
DENSE_MAX_CELLS = 1024 * 1024  # above it the certified sparse matching is faster (2,048² pairs: 0.25 s against 0.5)

SAERef = tuple[str, str]  # (release, sae_id)

# the study's reported shares of features matched at cosine 0.7 (gpt2-small), by kind of comparison
STUDY_RANGES = {"datasets": (0.06, 0.30), "seeds": (0.55, 0.85), "architectures": (0.40, 0.60)}

FEATURE_SPLITTING = "gpt2-small-res-jb-feature-splitting"
GPT2_TOPK = "gpt2-small-resid-post-v5-32k"  # OpenAI's TopK SAEs; blocks.L.hook_resid_post is blocks.L+1.hook_resid_pre



# ---------------------------------------------------------------- directions


def unit_rows(w: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    """Return the rows of `w` scaled to unit norm in float32 (all-zero rows stay zero)."""
    w = w.detach().float()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def decoder_directions(sae) -> Float[Tensor, "d_sae d_in"]:
    """Return an SAE's unit-norm decoder directions (rows of W_dec)."""
    return unit_rows(sae.W_dec)


def encoder_directions(sae) -> Float[Tensor, "d_sae d_in"]:
    """Return an SAE's unit-norm encoder directions (columns of W_enc, as rows)."""
    return unit_rows(sae.W_enc.T)


def random_directions(n: int, d: int, seed: int = 0) -> Float[Tensor, "n d"]:
    """Return n unit directions drawn uniformly on the sphere in d dimensions (the chance baseline)."""
    return unit_rows(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


@dataclass
class Dictionary:
    """One SAE's unit decoder and encoder directions, where it reads, and what is known of its features."""

    label: str
    release: str
    sae_id: str
    hook_name: str
    architecture: str
    decoder: Float[Tensor, "d_sae d_in"]
    encoder: Float[Tensor, "d_sae d_in"]
    l0: float | None = None  # active features per token, where the SAE's metadata records it
    decoder_norm: Float[Tensor, "d_sae"] | None = None  # ||W_dec[i]|| before normalisation
    firing: Float[Tensor, "d_sae"] | None = None  # share of held-out tokens on which each feature fires, if measured

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return self.decoder.shape[0]

    @property
    def layer(self) -> int:
        """Block index of the hook, counting blocks.L.hook_resid_post as entering block L+1."""
        return hook_layer(self.hook_name) + (1 if self.hook_name.endswith(".hook_resid_post") else 0)

    @property
    def self_cosine(self) -> Float[Tensor, "d_sae"]:
        """Return each feature's cosine between its own encoder column and decoder row."""
        return (self.encoder * self.decoder).sum(1)


def dictionary_from_sae(sae, label: str, release: str = "", sae_id: str = "") -> Dictionary:
    """Return a Dictionary holding an SAE's unit decoder and encoder directions (on the CPU), its decoder norms, its
    trained architecture and L0 where its metadata records them."""
    l0 = getattr(sae.cfg.metadata, "l0", None)
    # sae_lens saves a BatchTopK SAE as JumpReLU for inference: name the architecture it was trained as, where recorded
    arch = getattr(sae.cfg.metadata, "training_architecture", None) or sae.cfg.architecture()
    return Dictionary(label=label, release=release, sae_id=sae_id or label, hook_name=sae_hook(sae),
                      architecture=str(arch), decoder=decoder_directions(sae).cpu(),
                      encoder=encoder_directions(sae).cpu(), l0=None if l0 is None else float(l0),
                      decoder_norm=sae.W_dec.detach().float().norm(dim=1).cpu())


# ---------------------------------------------------------------- SAE groups


def as_ref(entry, release: str) -> SAERef:
    """Return (release, sae_id) for an id in `release` or a (release, id) pair."""
    if isinstance(entry, str):
        return (release, entry)
    if isinstance(entry, (tuple, list)) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
        return (entry[0], entry[1])
    raise ValueError(f"An SAE is an id (str) or a (release, sae_id) pair, not {entry!r}.")


def ref_label(ref: SAERef, release: str) -> str:
    """Return the short name of an SAE: its id inside `release`, else 'release/id'."""
    return ref[1] if ref[0] == release else f"{ref[0]}/{ref[1]}"


def sae_exists(ref: SAERef) -> bool:
    """Return whether an SAE id is known in its release: the organism's shipped ids, a local folder, or sae_lens's registry
    (offline: and held in the hub cache)."""
    from possae.loaders import ORGANISM, organism_sae_ids

    release, sae_id = ref
    if release == ORGANISM:
        return sae_id in organism_sae_ids()
    if Path(release).is_dir():
        return (Path(release) / sae_id / "cfg.json").is_file()
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory or sae_id not in directory[release].saes_map:
        return False
    return not hub_offline() or sae_cached(directory[release].repo_id, directory[release].saes_map[sae_id])


def resolve_ids(entries: Iterable | None, release: str) -> list[SAERef]:
    """Return the entries (ids in `release` or (release, id) pairs) as refs, dropping those that do not exist."""
    return [r for r in (as_ref(e, release) for e in (entries or [])) if sae_exists(r)]


def resolve_pairs(pairs: Iterable | None, release: str) -> list[tuple[SAERef, SAERef]]:
    """Return the pairs of SAEs whose two members both exist, as refs."""
    out = []
    for pair in pairs or []:
        if len(pair) != 2:
            raise ValueError(f"A pair is two SAEs, not {pair!r}.")
        a, b = as_ref(pair[0], release), as_ref(pair[1], release)
        if sae_exists(a) and sae_exists(b):
            out.append((a, b))
    return out


def default_groups(release: str) -> dict:
    """Return the matching suite's groups for a release: the organism's match-* SAEs, gpt2-small-res-jb's layers,
    feature-splitting widths and an OpenAI TopK SAE at the same point, or empty groups for any other release."""
    if release == "organism":
        return {
            "dataset_ids": ["match-stories", "match-encyclopedia", "match-books", "match-technical"],
            "seed_pairs": [("match-base", "match-seed2"), ("match-stories", "match-stories-seed2"),
                           ("match-technical", "match-technical-seed2")],
            "width_ids": ["match-4x", "match-8x", "match-base"],
            "k_ids": ["match-k8", "match-base", "match-k32"],
            "architecture_ids": ["match-base", "match-batchtopk", "match-jumprelu"],
            "layer_ids": {"TopK": [f"topk-L{i}" for i in range(4)],
                          "ReLU": ["relu-short", "relu-L1", "relu-L2", "relu-L3"]},
            "control_pairs": [("relu-short", "relu-full"), ("relu-short", "topk-L0")],
        }
    if release == "gpt2-small-res-jb":
        return {
            "dataset_ids": [],
            "seed_pairs": [],
            "width_ids": [(FEATURE_SPLITTING, f"blocks.8.hook_resid_pre_{w}") for w in (3072, 6144, 12288, 24576)],
            "k_ids": [],
            "architecture_ids": ["blocks.8.hook_resid_pre", (GPT2_TOPK, "blocks.7.hook_resid_post")],
            "layer_ids": {"ReLU (jb)": [f"blocks.{i}.hook_resid_pre" for i in range(12)]},
            "control_pairs": [],
        }
    return {"dataset_ids": [], "seed_pairs": [], "width_ids": [], "k_ids": [], "architecture_ids": [],
            "layer_ids": {}, "control_pairs": []}


# ---------------------------------------------------------------- chunked top-k cosines


@dataclass
class TopCosines:
    """Each row's top-k cosines (descending) and their indices in the other dictionary, in both directions."""

    a_values: Float[Tensor, "n_a k"]
    a_indices: Int[Tensor, "n_a k"]
    b_values: Float[Tensor, "n_b k"]
    b_indices: Int[Tensor, "n_b k"]

    def best(self, direction: str = "ab") -> Float[Tensor, "n"]:
        """Return each feature's best cosine in the other dictionary ('ab': of a's features in b, 'ba': the reverse)."""
        return (self.a_values if direction == "ab" else self.b_values)[:, 0]


@torch.no_grad()
def top_cosines(a: Float[Tensor, "n_a d"], b: Float[Tensor, "n_b d"], k: int = TOP_K, chunk_size: int = CHUNK_SIZE,
                device: str | None = None) -> TopCosines:
    """Return the top-k cosines of every row of a among b's rows and of every row of b among a's (rows normalised here;
    a chunk x n_b or chunk x n_a block is the largest thing held)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Dictionaries must be (n, d) with the same d; got {tuple(a.shape)} and {tuple(b.shape)}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    device = default_device(device)
    a, b = unit_rows(a).to(device), unit_rows(b).to(device)

    def best(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:  # each row of x's top-k cosines among y's rows
        kk = min(k, y.shape[0])
        parts = [(x[s : s + chunk_size] @ y.T).topk(kk, dim=1) for s in range(0, x.shape[0], chunk_size)]
        return torch.cat([v for v, _ in parts]).cpu(), torch.cat([i for _, i in parts]).cpu()

    # one pass per side: a top-k along rows of the product costs less than along its columns (for two dictionaries of
    # 2,048 rows on one CPU thread, 0.048 s against 0.060 s)
    return TopCosines(*best(a, b), *best(b, a))


@torch.no_grad()
def cosine_matrix(a: Float[Tensor, "n_a d"], b: Float[Tensor, "n_b d"], chunk_size: int = CHUNK_SIZE,
                  device: str | None = None, dtype=np.float64, negate: bool = False) -> np.ndarray:
    """Return the full (n_a x n_b) cosine matrix (or its negative) as a numpy array filled chunk by chunk."""
    device = default_device(device)
    a, b = unit_rows(a).to(device), unit_rows(b).to(device)
    out = np.empty((a.shape[0], b.shape[0]), dtype=dtype)
    for start in range(0, a.shape[0], chunk_size):
        cos = a[start : start + chunk_size] @ b.T
        out[start : start + len(cos)] = (-cos if negate else cos).cpu().numpy()
    return out


@dataclass
class Assignment:
    """A one-to-one matching: a's feature rows[i] is paired with b's cols[i] at cosine cosines[i].

    `method` says which solver ran ('dense': scipy's linear_sum_assignment on the full matrix; 'sparse': a min-cost
    matching on candidate edges, checked against every pair). `certified` is True when the matching is proven to
    maximise the summed cosine over ALL pairs (the dense problem), up to `tol` per pair; `gap_bound` bounds from above
    how much the optimal total cosine can exceed this one's (0 for the dense solver, whose optimum is exact)."""

    rows: Int[np.ndarray, "n_pairs"]
    cols: Int[np.ndarray, "n_pairs"]
    cosines: Float[np.ndarray, "n_pairs"]
    method: str = "dense"
    certified: bool = True
    gap_bound: float = 0.0
    n_edges: int = 0  # candidate edges the sparse solver ended with (0 for dense)
    rounds: int = 0  # sparse solves run (a new one after each growth of k or each set of edges the check added)
    k: int = 0  # the top-k the sparse candidate graph started from (after any doubling)

    @property
    def total(self) -> float:
        """The summed cosine of the matched pairs."""
        return float(self.cosines.sum())


def _flipped(m: Assignment) -> Assignment:
    """Return the assignment with its two sides exchanged, rows sorted."""
    order = np.argsort(m.cols, kind="stable")
    return Assignment(m.cols[order], m.rows[order], m.cosines[order], m.method, m.certified, m.gap_bound, m.n_edges,
                      m.rounds, m.k)


def _check_pair(a: Tensor, b: Tensor, nonempty: bool = False) -> None:
    """Raise ValueError unless a and b are (n, d) with the same d (and, if nonempty, at least one row each)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Dictionaries must be (n, d) with the same d; got {tuple(a.shape)} and {tuple(b.shape)}.")
    if nonempty and (a.shape[0] == 0 or b.shape[0] == 0):
        raise ValueError(f"Dictionaries must have at least one row; got {tuple(a.shape)} and {tuple(b.shape)}.")


def hungarian_match(a: Float[Tensor, "n_a d"], b: Float[Tensor, "n_b d"], chunk_size: int = CHUNK_SIZE,
                    device: str | None = None) -> Assignment:
    """Return the one-to-one matching of min(n_a, n_b) pairs that maximises the summed cosine (scipy's
    linear_sum_assignment on the full float64 matrix, built with the smaller dictionary as rows): exact, but it holds
    n_a x n_b float64 (24,576^2: 4.8 GB, 5.6 GB peak, 30-100 s on 2 cores); one_to_one_match routes large pairs to
    sparse_match."""
    _check_pair(a, b)
    if a.shape[0] > b.shape[0]:
        return _flipped(hungarian_match(b, a, chunk_size, device))
    cost = cosine_matrix(a, b, chunk_size, device, np.float64, negate=True)  # minimise -cos: no copy in scipy
    rows, cols = linear_sum_assignment(cost)
    return Assignment(rows, cols, -cost[rows, cols])


def column_potentials(n_b: int, src: np.ndarray, dst: np.ndarray, w: np.ndarray, eps: float = 1e-12,
                      max_iter: int | None = None) -> np.ndarray:
    """Return d_j = min(0, shortest path to column j) over arcs src -> dst of length w, from a virtual source joined
    to every column at length 0 (Bellman-Ford, relaxing only the arcs that leave a column whose label fell).

    With the arcs of sparse_match (M(i) -> j of length cos(i, M(i)) - cos(i, j) for each candidate edge (i, j) off the
    matching M), no negative cycle exists when M is optimal on the candidate graph; an improvement below eps is
    ignored so that rounding cannot cycle. Raises RuntimeError when labels still fall after max_iter rounds."""
    d = np.zeros(n_b)
    order = np.argsort(src, kind="stable")
    src, dst, w = src[order], dst[order], w[order]
    starts = np.searchsorted(src, np.arange(n_b + 1))
    active = np.unique(src)  # every column's label changed from +inf to 0
    for _ in range(max_iter or n_b + 1):
        if not len(active):
            return d
        lo, hi = starts[active], starts[active + 1]
        counts = hi - lo
        if counts.sum() == 0:
            return d
        idx = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        cand = d[src[idx]] + w[idx]
        heads = dst[idx]
        best = np.full(n_b, np.inf)
        np.minimum.at(best, heads, cand)
        fell = np.flatnonzero(best < d - eps)
        d[fell] = best[fell]
        active = fell
    raise RuntimeError("column_potentials: labels still fall (a negative cycle: the matching is not optimal on its "
                       "candidate graph).")


def _candidate_edges(top: TopCosines) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the union of each a-row's and each b-row's top-k edges as (rows, cols, cosines), without duplicates."""
    n_a, k_a = top.a_values.shape
    n_b, k_b = top.b_values.shape
    rows = np.concatenate([np.repeat(np.arange(n_a), k_a), top.b_indices.numpy().ravel()])
    cols = np.concatenate([top.a_indices.numpy().ravel(), np.repeat(np.arange(n_b), k_b)])
    vals = np.concatenate([top.a_values.numpy().ravel(), top.b_values.numpy().ravel()]).astype(np.float64)
    return _dedupe(rows, cols, vals, n_b)


def _dedupe(rows, cols, vals, n_b):
    _, first = np.unique(rows.astype(np.int64) * n_b + cols, return_index=True)
    return rows[first], cols[first], vals[first]


@torch.no_grad()
def _rebased_bound(a_rows: Tensor, b: Tensor, bound: np.ndarray, d: np.ndarray, delta: np.ndarray, n_cols: int,
                   chunk_size: int) -> np.ndarray:
    """Return bounds on max_j cos(i, j) + d_j over non-candidate columns, from bounds taken against potentials d -
    delta: exact over the n_cols columns whose potential rose most, the old bound + the largest other rise elsewhere."""
    n_b = len(d)
    n_cols = min(n_cols, n_b)
    top = np.argpartition(-delta, n_cols - 1)[:n_cols] if n_cols < n_b else np.arange(n_b)
    rest = np.ones(n_b, dtype=bool)
    rest[top] = False
    out = bound + (delta[rest].max() if rest.any() else -np.inf)
    cols = b[torch.from_numpy(top).to(b.device)]
    for start in range(0, len(a_rows), chunk_size):
        s = (a_rows[start : start + chunk_size] @ cols.T).double().cpu().numpy() + d[top]
        out[start : start + len(s)] = np.maximum(out[start : start + len(s)], s.max(axis=1))
    return out


@torch.no_grad()
def sparse_match(a: Float[Tensor, "n_a d"], b: Float[Tensor, "n_b d"], k: int = 2 * TOP_K,
                 chunk_size: int = CHUNK_SIZE, device: str | None = None, tol: float = 1e-6, max_rounds: int = 20,
                 scan_k: int = 16, margin: float = 0.02, change_cols: int = 1024,
                 top: TopCosines | None = None) -> Assignment:
    """Return the one-to-one matching of min(n_a, n_b) pairs maximising the summed cosine without the dense matrix.

    1. Candidate edges: each row's top-k cosines in both directions (top_cosines, or `top` if given). If they hold no
       full matching, k doubles.
    2. scipy.sparse.csgraph.min_weight_full_bipartite_matching on them (cost 2 - cos, never 0: csgraph drops zeros).
    3. Certificate: LP dual potentials from shortest paths in the residual graph (column_potentials): d_j <= 0 for
       b's features, d_i = d_M(i) + cos(i, M(i)) for a's, so that cos(i, j) + d_j <= d_i on every candidate edge with
       equality on the matching (and d_j = 0 on b's unmatched features). The matching is optimal over ALL pairs iff
       cos(i, j) + d_j <= d_i for every (i, j). Each row keeps a bound R_i >= cos(i, j) + ref_j over its non-candidate
       columns (from the top-k cosines, ref = 0, or from a scan against earlier potentials ref); R_i + max(d - ref)
       <= d_i + tol proves the row without a matmul, and so does the bound rebased on d (exact cosines with the
       change_cols columns whose potential rose most, R_i + the largest rise elsewhere). Rows still unproven are
       scanned (their cosines with all of b in chunks, top scan_k of cos + d kept): pairs within `margin` of
       violating join the candidates and, if any violates, step 2 reruns (column generation) until every row is
       proven or max_rounds solves have run.
    `tol` (per pair) absorbs float32 rounding (~1e-7): certified means no pair violates dual feasibility by more.
    The gap bound sum_i max(0, max_j cos(i, j) + d_j - d_i) - sum over b's unmatched d_j is the distance of a
    feasible dual (a's potentials raised by their violation) from the matching: the optimum exceeds this total by at
    most that."""
    _check_pair(a, b, nonempty=True)
    if k < 1 or scan_k < 1 or max_rounds < 1 or chunk_size < 1:
        raise ValueError(f"k, scan_k, max_rounds and chunk_size must be positive; got {k}, {scan_k}, {max_rounds}, "
                         f"{chunk_size}.")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}.")
    if a.shape[0] > b.shape[0]:
        return _flipped(sparse_match(b, a, k, chunk_size, device, tol, max_rounds, scan_k, margin, change_cols,
                                     None if top is None else TopCosines(top.b_values, top.b_indices, top.a_values,
                                                                         top.a_indices)))
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    n_a, n_b = a.shape[0], b.shape[0]
    dev = default_device(device)
    ua, ub = unit_rows(a).to(dev), unit_rows(b).to(dev)
    top = top if top is not None else top_cosines(a, b, k, chunk_size, dev)  # the cosines cosine_matrix has
    k = top.a_values.shape[1]

    def from_top(top: TopCosines):
        rows, cols, vals = _candidate_edges(top)
        kth = top.a_values[:, -1].double().numpy() if top.a_values.shape[1] < n_b else np.full(n_a, -np.inf)
        return rows, cols, vals, kth

    rows, cols, vals, bound = from_top(top)
    refs = [np.zeros(n_b)]  # potentials each row's bound was taken against
    ref_of = np.zeros(n_a, dtype=np.int64)
    rounds, solve, certified, cur = 0, True, False, 0
    while True:
        if solve:
            try:
                graph = csr_array((2.0 - vals, (rows, cols)), shape=(n_a, n_b))
                _, match = min_weight_full_bipartite_matching(graph)  # rows come back sorted: match[i] is i's column
            except ValueError:  # the candidate graph holds no full matching: widen every row's candidates
                if k >= n_b and top.b_values.shape[1] >= n_a:
                    raise
                k = min(2 * k, n_b)
                top = top_cosines(a, b, k, chunk_size, dev)
                r2, c2, v2, bound = from_top(top)
                rows, cols, vals = _dedupe(np.concatenate([rows, r2]), np.concatenate([cols, c2]),
                                           np.concatenate([vals, v2]), n_b)
                refs, ref_of = [np.zeros(n_b)], np.zeros(n_a, dtype=np.int64)
                continue
            rounds += 1
            on = match[rows] == cols
            cos_m = np.empty(n_a)
            cos_m[rows[on]] = vals[on]
            off = ~on
            arcs = (n_b, match[rows[off]], cols[off], cos_m[rows[off]] - vals[off])
            try:
                d = column_potentials(*arcs)
            except RuntimeError:  # a cycle shorter than -1e-12 left by the solver's rounding: ignore it, far below tol
                d = column_potentials(*arcs, eps=1e-9)
            du = d[match] + cos_m
            edge_viol = np.zeros(n_a)
            np.maximum.at(edge_viol, rows, vals + d[cols] - du[rows])
            refs.append(d)
            cur = len(refs) - 1
        used = np.unique(ref_of)
        shift = np.zeros(len(refs))
        shift[used] = [np.max(d - refs[r]) for r in used]
        row_viol = np.maximum(bound + shift[ref_of] - du, edge_viol)
        fail = np.flatnonzero(row_viol > tol)
        stale = fail[ref_of[fail] != cur]
        if len(stale):  # rebase stale bounds on d: exact cosines with the columns whose potential rose most
            for r in np.unique(ref_of[stale]):
                rr = stale[ref_of[stale] == r]
                bound[rr] = _rebased_bound(ua[torch.from_numpy(rr).to(dev)], ub, bound[rr], d, d - refs[r],
                                           change_cols, chunk_size)
                ref_of[rr] = cur
            row_viol[stale] = np.maximum(bound[stale] - du[stale], edge_viol[stale])
            fail = np.flatnonzero(row_viol > tol)
        if not len(fail):
            certified = True
            break
        if rounds >= max_rounds:
            break
        # scan the unproven rows against all of b: cos + d, keep the top scan_k, add those that violate
        dd = torch.from_numpy(d).to(dev, torch.float32)
        m = min(scan_k, n_b)
        new_r, new_c, new_v = [], [], []
        new_bound = np.empty(len(fail))
        n_viol = 0
        idx = torch.from_numpy(fail).to(dev)
        for start in range(0, len(fail), chunk_size):
            sel = idx[start : start + chunk_size]
            cos = ua[sel] @ ub.T
            s, j = (cos + dd).topk(m, dim=1)
            cj = cos.gather(1, j).double().cpu().numpy()
            s64 = cj + d[j.cpu().numpy()]  # float64 sums, as the check uses
            j = j.cpu().numpy()
            rr = fail[start : start + chunk_size]
            viol = s64 > du[rr, None] + tol
            add = s64 > du[rr, None] - margin  # violators and near-violators, which later potentials may push over
            new_r.append(np.broadcast_to(rr[:, None], j.shape)[add])
            new_c.append(j[add])
            new_v.append(cj[add])
            n_viol += int(viol.sum())
            # non-candidates after the addition: outside the top m (<= the m-th score, if any column lies outside;
            # float32 ranking against float64 sums errs by ~1e-7, within tol) or inside it and not added
            kept = np.where(add, -np.inf, s64).max(axis=1)
            outside = s64[:, -1] if m < n_b else -np.inf
            new_bound[start : start + len(rr)] = np.maximum(kept, outside)
        bound[fail] = new_bound
        ref_of[fail] = cur
        added = np.concatenate(new_r)
        added_c, added_v = np.concatenate(new_c), np.concatenate(new_v)
        rows, cols, vals = _dedupe(np.concatenate([rows, added]), np.concatenate([cols, added_c]),
                                   np.concatenate([vals, added_v]), n_b)
        solve = n_viol > 0  # else the matching and potentials stand: the added edges violate by at most tol
        if not solve:
            np.maximum.at(edge_viol, added, added_v + d[added_c] - du[added])
    free = np.ones(n_b, dtype=bool)
    free[match] = False
    gap = float(np.maximum(row_viol, 0).sum() - d[free].sum())
    return Assignment(np.arange(n_a), match.astype(np.int64), cos_m, "sparse", certified, max(gap, 0.0), len(rows),
                      rounds, k)


def one_to_one_match(a: Float[Tensor, "n_a d"], b: Float[Tensor, "n_b d"], method: str = "auto",
                     chunk_size: int = CHUNK_SIZE, device: str | None = None,
                     dense_max_cells: int | None = None, top: TopCosines | None = None, **sparse) -> Assignment:
    """Return the one-to-one matching of min(n_a, n_b) pairs that maximises the summed cosine: 'dense'
    (hungarian_match, exact), 'sparse' (sparse_match, certified exact or with a gap bound; `top` and `sparse` are passed
    to it) or 'auto': dense up to n_a * n_b = dense_max_cells (None: DENSE_MAX_CELLS), sparse above."""
    if method not in ("auto", "dense", "sparse"):
        raise ValueError(f"method must be 'auto', 'dense' or 'sparse'; got {method!r}.")
    _check_pair(a, b)
    if method == "auto":
        limit = DENSE_MAX_CELLS if dense_max_cells is None else dense_max_cells
        method = "dense" if a.shape[0] * b.shape[0] <= limit else "sparse"
    if method == "dense":
        return hungarian_match(a, b, chunk_size, device)
    return sparse_match(a, b, chunk_size=chunk_size, device=device, top=top, **sparse)


# ---------------------------------------------------------------- pair statistics


def best_match_stats(top: TopCosines, threshold: float = THRESHOLD) -> dict[str, float]:
    """Return share above threshold and mean max cosine (MMCS) of a's features in b ('_ab'), the reverse ('_ba') and
    their means."""
    ab, ba = top.best("ab"), top.best("ba")
    out = {"share_ab": float((ab >= threshold).float().mean()), "share_ba": float((ba >= threshold).float().mean()),
           "mmcs_ab": float(ab.mean()), "mmcs_ba": float(ba.mean())}
    out["share"] = (out["share_ab"] + out["share_ba"]) / 2
    out["mmcs"] = (out["mmcs_ab"] + out["mmcs_ba"]) / 2
    return out


def hungarian_stats(assignment: Assignment | None, threshold: float = THRESHOLD) -> dict[str, float | str | bool]:
    """Return the mean matched cosine, the share of matched pairs at or above the threshold, the solver that ran,
    whether the matching is certified optimal and the bound on its shortfall in total cosine (NaN and 'skipped' for
    no assignment)."""
    if assignment is None:
        return {"hungarian_mean": float("nan"), "hungarian_share": float("nan"), "one_to_one_method": "skipped",
                "one_to_one_certified": False, "one_to_one_gap": float("nan")}
    c = assignment.cosines
    return {"hungarian_mean": float(c.mean()), "hungarian_share": float((c >= threshold).mean()),
            "one_to_one_method": assignment.method, "one_to_one_certified": bool(assignment.certified),
            "one_to_one_gap": float(assignment.gap_bound)}


def match_pair(a: Dictionary, b: Dictionary, threshold: float = THRESHOLD, k: int = TOP_K,
               chunk_size: int = CHUNK_SIZE, device: str | None = None, encoder: bool = True,
               hungarian_max_features: int | None = HUNGARIAN_MAX_FEATURES) -> tuple[dict, TopCosines]:
    """Return (one row of statistics, the decoder top-k cosines) for a pair of dictionaries: decoder best-match share
    and MMCS both ways and for the smaller dictionary's features (`dec_share_small`, the side Hungarian matching pairs
    in full, so that `hungarian_share <= dec_share_small`), the same for encoders, and the decoders' one-to-one
    matching (one_to_one_match: dense Hungarian for small pairs, sparse and certified above; with the solver, the
    certificate and the gap bound in `one_to_one_*`) unless a dictionary exceeds hungarian_max_features."""
    if a.decoder.shape[1] != b.decoder.shape[1]:
        raise ValueError(f"{a.label} (d_in {a.decoder.shape[1]}) and {b.label} (d_in {b.decoder.shape[1]}) "
                         "do not live in the same space.")
    row = {"a": a.label, "b": b.label, "hook_a": a.hook_name, "hook_b": b.hook_name, "d_sae_a": a.d_sae,
           "d_sae_b": b.d_sae}
    top = top_cosines(a.decoder, b.decoder, k, chunk_size, device)
    row.update({f"dec_{key}": v for key, v in best_match_stats(top, threshold).items()})
    # the features Hungarian pairs all of: the smaller dictionary's (both directions' mean when equal)
    row["dec_share_small"] = (row["dec_share_ab"] if a.d_sae < b.d_sae else row["dec_share_ba"] if a.d_sae > b.d_sae
                              else row["dec_share"])
    if encoder:
        enc = top_cosines(a.encoder, b.encoder, 1, chunk_size, device)
        row.update({f"enc_{key}": v for key, v in best_match_stats(enc, threshold).items()})
    if hungarian_max_features is None or max(a.d_sae, b.d_sae) <= hungarian_max_features:
        # dense up to DENSE_MAX_CELLS pairs, else sparse on the top-k edges computed above (certified or gap-bounded)
        row.update(hungarian_stats(one_to_one_match(a.decoder, b.decoder, chunk_size=chunk_size, device=device,
                                                    top=top), threshold))
    else:
        row.update(hungarian_stats(None))
    return row, top


@dataclass
class PairResults:
    """A table with one row per pair of dictionaries and each pair's decoder top-k cosines."""

    table: pd.DataFrame
    top: dict[tuple[str, str], TopCosines]


def match_pairs(pairs: Sequence[tuple[str, str]], dictionaries: dict[str, Dictionary], threshold: float = THRESHOLD,
                k: int = TOP_K, chunk_size: int = CHUNK_SIZE, device: str | None = None, encoder: bool = True,
                hungarian_max_features: int | None = HUNGARIAN_MAX_FEATURES, progress: bool = True) -> PairResults:
    """Return match_pair's statistics for each (label_a, label_b) pair (a table) and their decoder top-k cosines."""
    rows, tops = [], {}
    for la, lb in tqdm(pairs, desc="matching", disable=not progress or len(pairs) < 2):
        row, top = match_pair(dictionaries[la], dictionaries[lb], threshold, k, chunk_size, device, encoder,
                              hungarian_max_features)
        rows.append(row)
        tops[(la, lb)] = top
    return PairResults(pd.DataFrame(rows), tops)


def all_pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """Return every unordered pair (i < j) of labels."""
    return list(itertools.combinations(labels, 2))


def width_pairs(dictionaries: dict[str, Dictionary], labels: Sequence[str]) -> list[tuple[str, str]]:
    """Return every pair of labels ordered (smaller dictionary, larger dictionary)."""
    return [tuple(sorted(p, key=lambda lab: dictionaries[lab].d_sae)) for p in all_pairs(labels)]


def layer_matrix(dictionaries: dict[str, Dictionary], labels: Sequence[str], threshold: float = THRESHOLD,
                 chunk_size: int = CHUNK_SIZE, device: str | None = None, adjacent_only: bool = False,
                 progress: bool = True, tops: dict[tuple[str, str], TopCosines] | None = None) -> pd.DataFrame:
    """Return, for each ordered pair of a family's layers (row layer's features looked up in the column layer's
    dictionary), the decoder share above threshold and MMCS; one chunked pass per unordered pair, the diagonal 1.
    tops: decoder top cosines already computed (match_pairs's PairResults.top), used for the pairs they hold."""
    tops = tops or {}
    layers = [dictionaries[lab].layer for lab in labels]
    rows = [{"layer_a": la, "layer_b": la, "a": lab, "b": lab, "share": 1.0, "mmcs": 1.0}
            for lab, la in zip(labels, layers)]
    pairs = [(i, j) for i, j in itertools.combinations(range(len(labels)), 2) if not adjacent_only or j == i + 1]
    for i, j in tqdm(pairs, desc="layers", disable=not progress or len(pairs) < 2):
        top = tops.get((labels[i], labels[j])) or top_cosines(dictionaries[labels[i]].decoder,
                                                              dictionaries[labels[j]].decoder, 1, chunk_size, device)
        s = best_match_stats(top, threshold)
        rows.append({"layer_a": layers[i], "layer_b": layers[j], "a": labels[i], "b": labels[j],
                     "share": s["share_ab"], "mmcs": s["mmcs_ab"]})
        rows.append({"layer_a": layers[j], "layer_b": layers[i], "a": labels[j], "b": labels[i],
                     "share": s["share_ba"], "mmcs": s["mmcs_ba"]})
    return pd.DataFrame(rows).sort_values(["layer_a", "layer_b"], ignore_index=True)


def top_cosines_long(tops: dict[tuple[str, str], TopCosines], direction: str = "ab") -> pd.DataFrame:
    """Return a long frame (pair, rank 1..k, cosine) of each feature's k best cosines in the other dictionary."""
    frames = []
    for (la, lb), top in tops.items():
        values = (top.a_values if direction == "ab" else top.b_values).numpy()
        name = f"{la} → {lb}" if direction == "ab" else f"{lb} → {la}"
        for r in range(values.shape[1]):
            frames.append(pd.DataFrame({"pair": name, "rank": r + 1, "cosine": values[:, r]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["pair", "rank", "cosine"])


# ---------------------------------------------------------------- parameters and groups

COMPARISONS = ("datasets", "seeds", "widths", "k", "architectures")
WHAT = {  # comparison: (its parameter, what its SAEs are) for the sentence that replaces a skipped section
    "datasets": ("dataset_ids", "SAEs trained on different datasets"),
    "seeds": ("seed_pairs", "pairs of SAEs that differ only in their seed"),
    "widths": ("width_ids", "SAEs of different widths"),
    "k": ("k_ids", "SAEs with different k"),
    "architectures": ("architecture_ids", "SAEs of different architectures"),
    "layers": ("layer_ids", "per-layer SAE families"),
    "controls": ("control_pairs", "pairs of SAEs at the same hook for the positive control"),
}


@dataclass(frozen=True)
class MatchingParams(ChapterParams):
    """Parameters of the matching chapter (the names of its parameters cell)."""

    sae_release: str = "organism"
    sae_id: str = "match-base"
    device: str | None = None
    threshold: float = THRESHOLD
    dataset_ids: tuple[Any, ...] | None = None
    seed_pairs: tuple[Any, ...] | None = None
    width_ids: tuple[Any, ...] | None = None
    k_ids: tuple[Any, ...] | None = None
    architecture_ids: tuple[Any, ...] | None = None
    layer_ids: dict | tuple[Any, ...] | None = None
    control_pairs: tuple[Any, ...] | None = None
    all_layer_pairs: bool = True
    chunk_size: int = CHUNK_SIZE
    hungarian_max_features: int = HUNGARIAN_MAX_FEATURES
    n_heldout_tokens: int = 16384
    seed: int = 0

    def validate(self) -> None:
        """Raise ParameterError on a threshold outside (0, 1] or non-positive sizes."""
        if not 0 < self.threshold <= 1:
            raise ParameterError(f"threshold must lie in (0, 1]; got {self.threshold}.")
        for name in ("chunk_size", "n_heldout_tokens"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be at least 1; got {getattr(self, name)}.")
        if self.hungarian_max_features < 0:
            raise ParameterError(f"hungarian_max_features must be >= 0; got {self.hungarian_max_features}.")


@dataclass
class Groups:
    """The SAEs of each comparison, as refs that exist in their release."""

    base: SAERef
    ids: dict[str, list[SAERef]]  # datasets, widths, k, architectures
    seed_pairs: list[tuple[SAERef, SAERef]]
    layers: dict[str, list[SAERef]]  # family: one SAE per layer
    controls: list[tuple[SAERef, SAERef]]

    def refs(self) -> list[SAERef]:
        """Return every SAE the chapter compares, once, the base first."""
        pairs = [r for p in self.seed_pairs + self.controls for r in p]
        return list(dict.fromkeys([self.base, *(r for v in self.ids.values() for r in v), *pairs,
                                   *(r for v in self.layers.values() for r in v)]))


def resolve_groups(params: MatchingParams) -> Groups:
    """Return the groups the parameters name (None: the release's defaults), SAEs that do not exist dropped."""
    defaults, rel = default_groups(params.sae_release), params.sae_release
    pick = lambda name: defaults.get(name, []) if getattr(params, name) is None else getattr(params, name)  # noqa: E731
    layer_spec = pick("layer_ids")
    layer_spec = layer_spec if isinstance(layer_spec, dict) else {"layers": layer_spec}
    layers = {fam: refs for fam, ids in layer_spec.items() if len(refs := resolve_ids(ids, rel)) >= 2}
    ids = {name: resolve_ids(pick(WHAT[name][0]), rel) for name in ("datasets", "widths", "k", "architectures")}
    return Groups(as_ref(params.sae_id, rel), ids, resolve_pairs(pick("seed_pairs"), rel), layers,
                  resolve_pairs(pick("control_pairs"), rel))


# ---------------------------------------------------------------- loading and held-out measurements


@torch.no_grad()
def hook_inputs(model, hook: str, tokens: Int[Tensor, "n_windows pos"], positions: range,
                batch_size: int = 16) -> Float[Tensor, "n d_in"]:
    """Return the model's activations at `hook` at `positions` of every window, flattened (each batch's forward pass
    stops after the hook's block)."""
    parts = []
    for start in range(0, len(tokens), batch_size):
        act = hook_activations(model, tokens[start : start + batch_size].to(model.cfg.device), hook)
        parts.append(act[:, positions.start : positions.stop].reshape(-1, act.shape[-1]))
    return torch.cat(parts)


@torch.no_grad()
def firing_rates(model, sae, tokens: Int[Tensor, "n_windows pos"], batch_size: int = 16,
                 inputs: Float[Tensor, "n d_in"] | None = None) -> Float[Tensor, "d_sae"]:
    """Return the share of held-out tokens (positions inside the SAE's context, BOS excluded) on which each feature
    fires; `inputs`: hook_inputs of those tokens and positions when already computed (SAEs at one hook share them)."""
    if inputs is None:
        positions = in_context_positions(sae_context_size(sae, tokens.shape[1]), model.cfg.n_ctx)
        inputs = hook_inputs(model, sae_hook(sae), tokens, positions, batch_size)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for x in inputs.split(batch_size * tokens.shape[1]):
        # counted in float32 (exact below 2**24 rows a batch): a column sum of bools is four times slower on a CPU
        fired += (sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype)) > 0).float().sum(0).double().cpu()
    return (fired / len(inputs)).float()


def load_inputs(params: MatchingParams) -> tuple[Any, dict[str, Dictionary], Int[Tensor, "n_windows pos"]]:
    """Return (the base SAE's model, {label: Dictionary} of every SAE the groups name, held-out windows of the base
    SAE's context); the architectures' SAEs carry their firing rates on those windows. SAEs load one at a time."""
    from possae.heldout import heldout_windows
    from possae.loaders import expected_model, load_model, load_sae_for

    groups = resolve_groups(params)
    name, kwargs = expected_model(*groups.base)
    model = load_model(name, device=str(default_device(params.device)), **kwargs)
    tokens = None
    live = set(groups.ids["architectures"])
    inputs: dict[tuple[str, int, int], Tensor] = {}
    out: dict[str, Dictionary] = {}
    for ref in groups.refs():
        sae = load_sae_for(model, ref[0], ref[1], device=str(default_device(params.device)))
        if tokens is None:  # the base SAE comes first: windows of its context
            tokens = heldout_windows(model.tokenizer, sae_context_size(sae, model.cfg.n_ctx), params.n_heldout_tokens)
        d = dictionary_from_sae(sae, ref_label(ref, params.sae_release), *ref)
        if ref in live:  # one forward pass per hook and context, shared by the SAEs that read it
            positions = in_context_positions(sae_context_size(sae, tokens.shape[1]), model.cfg.n_ctx)
            key = (sae_hook(sae), positions.start, positions.stop)
            if key not in inputs:
                inputs[key] = hook_inputs(model, key[0], tokens, positions)
            d.firing = firing_rates(model, sae, tokens, inputs=inputs[key])
        out[d.label] = d
        del sae
    return model, out, tokens


@torch.no_grad()
def block_changes(model, tokens: Int[Tensor, "n_windows pos"], blocks: Sequence[int],
                  batch_size: int = 16) -> pd.DataFrame:
    """Return per block L how the residual stream changes from x_L (entering block L) to x_{L+1} on held-out tokens
    (BOS excluded): the mean cosine of x_L with x_{L+1}, the median ||x_{L+1} - x_L|| / ||x_L||, and the explained
    variance of x_{L+1} by x_L itself (1 - sum ||x_{L+1} - x_L||^2 / sum ||x_{L+1} - mean||^2)."""
    from possae.metrics import PositionSums, pooled_nmse, reconstruction_sums

    blocks = sorted(set(blocks))
    names = {L: resid_pre(L) for L in blocks} | {L + 1: resid_pre(L + 1) for L in blocks}
    last = model.cfg.n_layers
    if last in names:
        names[last] = act_name("resid_post", last - 1)
    n_pos = tokens.shape[1]
    sums = {L: PositionSums.empty(n_pos) for L in blocks}
    ratios: dict[int, list[Tensor]] = {L: [] for L in blocks}
    for start in range(0, len(tokens), batch_size):
        _, cache = model.run_with_cache(tokens[start : start + batch_size].to(model.cfg.device),
                                        names_filter=sorted(set(names.values())),
                                        stop_at_layer=max(blocks) + 2 if max(blocks) + 1 < last else None)
        for L in blocks:
            x_in, x_out = cache[names[L]][:, 1:].float().cpu(), cache[names[L + 1]][:, 1:].float().cpu()
            positions = torch.arange(1, n_pos).repeat(x_in.shape[0])
            x_in, x_out = x_in.reshape(-1, x_in.shape[-1]), x_out.reshape(-1, x_out.shape[-1])
            cos = torch.nn.functional.cosine_similarity(x_in, x_out, dim=1)
            sums[L].add(positions, cos=cos, **reconstruction_sums(x_out, {"input": x_in}))
            ratios[L].append((x_out - x_in).norm(dim=1) / x_in.norm(dim=1).clamp_min(1e-12))
    rows = []
    for L in blocks:
        where = sums[L].mask(1)
        rows.append({"block": L, "cos": float(sums[L].totals["cos"].sum() / sums[L].n.sum()),
                     "ratio": float(torch.cat(ratios[L]).median()),
                     "explained_variance": 1 - pooled_nmse(sums[L], "input", where)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- display tables and sentences

DASH = "—"


def fmt(x: float, spec: str = ".3f") -> str:
    """Return a number formatted for a table, or a dash where it is missing (NaN or None)."""
    return DASH if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def pct(x: float) -> str:
    """Return a share as a percentage with one decimal, e.g. '12.3%'."""
    return f"{x:.1%}"


def pct_range(values: Sequence[float]) -> str:
    """Return 'a%' or 'a% to b%' for the smallest and largest of some shares."""
    lo, hi = float(np.min(values)), float(np.max(values))
    return pct(lo) if pct(lo) == pct(hi) else f"{pct(lo)} to {pct(hi)}"


def pair_table(table: pd.DataFrame) -> pd.DataFrame:
    """Return a match table for display: decoder share both ways, MMCS and the one-to-one (Hungarian) numbers."""
    return pd.DataFrame({
        "A": table["a"], "B": table["b"], "share A→B": table["dec_share_ab"].map(fmt),
        "share B→A": table["dec_share_ba"].map(fmt), "MMCS": table["dec_mmcs"].map(fmt),
        "one-to-one share": table["hungarian_share"].map(fmt), "one-to-one mean cos": table["hungarian_mean"].map(fmt)})


def containment(table: pd.DataFrame) -> pd.DataFrame:
    """Return, per (small, large) pair, the share of the small dictionary's features with a decoder match in the large
    one, the reverse, and the Hungarian share (pairs are oriented so that a is the smaller)."""
    swap = table["d_sae_a"] > table["d_sae_b"]
    return pd.DataFrame({
        "small": np.where(swap, table["b"], table["a"]), "large": np.where(swap, table["a"], table["b"]),
        "d_sae_small": np.where(swap, table["d_sae_b"], table["d_sae_a"]),
        "d_sae_large": np.where(swap, table["d_sae_a"], table["d_sae_b"]),
        "small in large": np.where(swap, table["dec_share_ba"], table["dec_share_ab"]),
        "large in small": np.where(swap, table["dec_share_ab"], table["dec_share_ba"]),
        "Hungarian share": table["hungarian_share"],
    })


def containment_table(contain: pd.DataFrame) -> pd.DataFrame:
    """Return the containment frame for display (numbers formatted, a dash where Hungarian was skipped)."""
    out = contain.copy()
    for c in ("small in large", "large in small", "Hungarian share"):
        out[c] = out[c].map(fmt)
    return out.rename(columns={"d_sae_small": "d_sae small", "d_sae_large": "d_sae large",
                               "Hungarian share": "one-to-one share"})


def architecture_frame(dictionaries: dict[str, Dictionary], labels: Sequence[str]) -> pd.DataFrame:
    """Return per dictionary its architecture, width, L0 (on held-out text: the sum of its features' firing shares;
    the SAE's recorded L0 where firing was not measured), share of features firing on held-out text, and the mean
    cosine between each feature's encoder column and decoder row, for firing and for silent features."""
    rows = []
    for lab in labels:
        d = dictionaries[lab]
        live = d.firing > 0 if d.firing is not None else torch.ones(d.d_sae, dtype=torch.bool)
        cos = d.self_cosine
        rows.append({"SAE": lab, "architecture": d.architecture, "d_sae": d.d_sae,
                     "l0": float(d.firing.double().sum()) if d.firing is not None else np.nan if d.l0 is None else d.l0,
                     "l0_heldout": d.firing is not None, "n_live": int(live.sum()),
                     "live_share": float(live.float().mean()),
                     "cos_live": float(cos[live].mean()) if live.any() else np.nan,
                     "cos_dead": float(cos[~live].mean()) if (~live).any() else np.nan,
                     "norm_live": float(d.decoder_norm[live].median()) if live.any() else np.nan,
                     "norm_dead": float(d.decoder_norm[~live].median()) if (~live).any() else np.nan})
    return pd.DataFrame(rows)


def architecture_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the architecture frame for display (7 columns, dashes where a value does not exist)."""
    return pd.DataFrame({
        "SAE": frame["SAE"], "architecture": frame["architecture"], "d_sae": frame["d_sae"],
        "L0 (held-out text)": [fmt(v, ".1f") + ("" if held else " (recorded)") for v, held in
                               zip(frame["l0"], frame["l0_heldout"])],
        "features firing": [f"{n} ({pct(s)})" for n, s in zip(frame["n_live"], frame["live_share"])],
        "enc·dec cos, firing": frame["cos_live"].map(fmt), "enc·dec cos, silent": frame["cos_dead"].map(fmt)})


def live_pair_frame(pairs: Sequence[tuple[str, str]], dictionaries: dict[str, Dictionary],
                    threshold: float = THRESHOLD, chunk_size: int = CHUNK_SIZE, device: str | None = None,
                    matched: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return per pair the decoder and encoder best-match shares (mean of both directions) among features that fire on
    held-out text only, beside the same over all features; those are read from `matched` (match_pairs's table of the
    same pairs, at the same threshold) where it has the pair, else computed."""
    done = {} if matched is None else {(r.a, r.b): r for r in matched.itertuples(index=False)}
    rows = []
    for la, lb in pairs:
        a, b = dictionaries[la], dictionaries[lb]
        la_live, lb_live = a.firing > 0, b.firing > 0
        row = {"a": la, "b": lb}
        for kind in ("decoder", "encoder"):
            key = f"{kind[:3]}_share"
            full = (getattr(done[(la, lb)], key) if (la, lb) in done else
                    best_match_stats(top_cosines(getattr(a, kind), getattr(b, kind), 1, chunk_size, device),
                                     threshold)["share"])
            live = best_match_stats(top_cosines(getattr(a, kind)[la_live], getattr(b, kind)[lb_live], 1, chunk_size,
                                                device), threshold) if la_live.any() and lb_live.any() else {"share": 0.0}
            row[f"{kind[:3]}_all"], row[f"{kind[:3]}_live"] = full, live["share"]
        rows.append(row)
    return pd.DataFrame(rows)


def live_pair_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the live-feature match frame for display."""
    return pd.DataFrame({"A": frame["a"], "B": frame["b"], "decoder, all": frame["dec_all"].map(fmt),
                         "decoder, firing only": frame["dec_live"].map(fmt), "encoder, all": frame["enc_all"].map(fmt),
                         "encoder, firing only": frame["enc_live"].map(fmt)})


def block_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the residual-stream changes per block for display."""
    return pd.DataFrame({"block": frame["block"], "mean cos(x_L, x_L+1)": frame["cos"].map(fmt),
                         "median ‖block output‖ / ‖x_L‖": frame["ratio"].map(lambda v: fmt(v, ".2f")),
                         "variance of x_L+1 explained by x_L": frame["explained_variance"].map(fmt)})


def adjacent_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the adjacent-layer matches for display: family, layers, shares both ways, MMCS, one-to-one, encoder."""
    return pd.DataFrame({"family": frame["family"], "layers": frame["layers"],
                         "share lower→upper": frame["dec_share_ab"].map(fmt),
                         "share upper→lower": frame["dec_share_ba"].map(fmt), "MMCS": frame["dec_mmcs"].map(fmt),
                         "one-to-one share": frame["hungarian_share"].map(fmt), "encoder share": frame["enc_share"].map(fmt)})


def overview_frame(everything: pd.DataFrame) -> pd.DataFrame:
    """Return per comparison its number of pairs, the study's range, the ranges of best-match and one-to-one shares, the
    mean MMCS and the mean encoder share, formatted for display."""
    rows = []
    for comp, g in everything.groupby("comparison", sort=False):
        lo, hi = STUDY_RANGES.get(comp, (None, None))
        hung = g["hungarian_share"].dropna()
        rows.append({"comparison": comp, "pairs": len(g), "study (best match)": DASH if lo is None else f"{lo:.0%}-{hi:.0%}",
                     "best match": pct_range(g["dec_share_small"]), "one-to-one": pct_range(hung) if len(hung) else DASH,
                     "MMCS, mean": fmt(float(g["dec_mmcs"].mean())), "encoder share, mean": pct(float(g["enc_share"].mean()))})
    return pd.DataFrame(rows)


def skipped_sentence(name: str, release: str) -> str:
    """Return the sentence that stands in for a comparison without SAEs: none named for the release, or (offline) the
    ones it names are not in the local Hugging Face cache."""
    param, what = WHAT[name]
    if default_groups(release).get(param) and hub_offline():
        return (f"The {what} this release ({release}) names are not in the local Hugging Face cache and the hub is "
                f"offline (HF_HUB_OFFLINE), so this comparison is skipped here; with a network, or with them cached, "
                "it runs.")
    return f"No {what} are given for this release ({release}): this comparison is skipped. Pass {param} to add some."


def share_sentence(name: str, table: pd.DataFrame | None, threshold: float, release: str) -> str:
    """Return the sentence that sums up one comparison: its range of best-match and one-to-one shares."""
    if table is None:
        return skipped_sentence(name, release)
    lead = {"datasets": "Between corpus groups", "seeds": "Changing only the seed", "widths": "Between widths",
            "k": "Between values of k", "architectures": "Across architectures"}[name]
    hung = table["hungarian_share"].dropna()
    one = f", and {pct_range(hung)} one-to-one" if len(hung) else " (one-to-one matching was skipped: too many features)"
    return (f"{lead}, {pct_range(table['dec_share_small'])} of features (best match, of the smaller dictionary or the "
            f"mean of both directions) have a counterpart at cosine {threshold:.2f}{one}.")


def containment_sentence(contain: pd.DataFrame | None, release: str) -> str:
    """Return the containment sentence for the smallest dictionary against the largest."""
    if contain is None:
        return skipped_sentence("widths", release)
    x = contain.sort_values(["d_sae_small", "d_sae_large"], ascending=[True, False]).iloc[0]
    hung = ("" if not np.isfinite(x["Hungarian share"]) else
            f"; one-to-one, {pct(x['Hungarian share'])} of the small dictionary's features keep a partner above the threshold")
    return (f"Containment: {pct(x['small in large'])} of the features of {x['small']} ({x['d_sae_small']} features) have "
            f"a partner in {x['large']} ({x['d_sae_large']}), against {pct(x['large in small'])} the other way round{hung}.")


def architecture_sentence(frame: pd.DataFrame, live: pd.DataFrame, release: str) -> str:
    """Return what the architecture table shows: how many features fire, and what the silent ones look like."""
    if frame.empty:
        return skipped_sentence("architectures", release)
    if len(frame) < 2:
        return one_architecture_sentence(frame, release)
    x = frame.sort_values("live_share").iloc[0]
    l0 = frame["l0"].dropna()
    where = "on held-out text" if frame["l0_heldout"].all() else "on held-out text or as recorded in their metadata"
    text = (f"The SAEs' L0s {where} run from {l0.min():.1f} to {l0.max():.1f} active features per token. " if len(l0)
            else "")
    if x["live_share"] >= 0.5:
        return text + (f"Every architecture's features mostly fire on held-out text (at least {pct(x['live_share'])}, "
                       f"for {x['SAE']}), so silent features do not explain the differences between them.")
    worst = live[(live["a"] == x["SAE"]) | (live["b"] == x["SAE"])]
    return text + (
        f"Only {x['n_live']} of the {x['d_sae']} features of {x['SAE']} ({pct(x['live_share'])}) ever fire on held-out "
        f"text. Features that never fire add nothing to a reconstruction, and these look untrained: their decoder rows have "
        f"a median norm of "
        f"{x['norm_dead']:.3f} (against {x['norm_live']:.3f} for the firing ones) and their encoder columns are nearly "
        f"orthogonal to their own decoder rows (mean cosine {x['cos_dead']:.3f}, against {x['cos_live']:.3f} for firing "
        f"features). Such features are not shared with anything, so at most about {pct(x['live_share'])} of "
        f"{x['SAE']}'s features can find a counterpart, by decoder or by encoder: this, not a difference between "
        f"encoders and decoders, is why its shares are near zero. Restricted to firing features on both sides, its "
        f"pairs share {pct_range(worst['dec_live'])} of decoder directions and {pct_range(worst['enc_live'])} of "
        f"encoder directions.")


def one_architecture_sentence(frame: pd.DataFrame, release: str) -> str:
    """Return what the architecture table shows when it holds one SAE (so one architecture): no comparison."""
    arch = frame["architecture"].iloc[0]
    saes = ", ".join(frame["SAE"])
    why = (" (the others this release names are not in the local Hugging Face cache)"
           if len(default_groups(release).get("architecture_ids", [])) > len(frame) and hub_offline() else "")
    return (f"Only one architecture ({arch}: {saes}) is available here{why}, so nothing is compared across "
            f"architectures; {pct(float(frame['live_share'].min()))} of its features fire on held-out text.")


def distance_sentence(layer_mat: pd.DataFrame, release: str) -> str:
    """Return the share matched between adjacent layers against the layers farthest apart, or, when only adjacent
    layers were matched (all_layer_pairs False), that share alone and why there is no distance to compare."""
    dist = (layer_mat["layer_a"] - layer_mat["layer_b"]).abs()
    if not (dist == 1).any():
        return skipped_sentence("layers", release)
    if dist.max() <= 1:
        return (f"Averaged over families and directions, the share matched between adjacent layers is "
                f"{pct(float(layer_mat.loc[dist == 1, 'share'].mean()))}; only adjacent layers were matched here "
                "(all_layer_pairs is False), so how the share falls with the distance between layers is not measured.")
    return (f"Averaged over families and directions, the share matched is "
            f"{pct(float(layer_mat.loc[dist == 1, 'share'].mean()))} between adjacent layers and "
            f"{pct(float(layer_mat.loc[dist == dist.max(), 'share'].mean()))} between the layers farthest apart "
            f"({int(dist.max())} apart).")


def _layer_pair(row: pd.Series, one_family: bool) -> str:
    """Return how the layer sentence names an adjacent pair: 'layers 0→1', with its family when there are several."""
    return f"layers {row['layers']}" if one_family else f"{row['family']} {row['layers']}"


def second_sentence(second: pd.Series) -> str:
    """Return the share of features with a second partner above the threshold, at most over the pairs shown."""
    if second.empty:
        return "No pairs were compared."
    return (f"At most {pct(float(second.max()))} of a pair's features (for {second.idxmax()}) have a second partner "
            "above the threshold, so best matching rarely counts several features of one dictionary against one "
            "feature of the other." if second.max() < 0.05 else
            f"Up to {pct(float(second.max()))} of a pair's features (for {second.idxmax()}) have a second partner "
            "above the threshold: there best match counts several features of one dictionary against one of the other.")


def layer_sentence(adjacent: pd.DataFrame, blocks: pd.DataFrame, controls: pd.DataFrame | None,
                   rand_mmcs: float, release: str) -> str:
    """Return what the layer comparison shows: the best and worst adjacent pairs, and for the worst the change of the
    residual stream across its block and the positive control at its lower layer."""
    if adjacent.empty:
        return skipped_sentence("layers", release)
    best, worst = adjacent.loc[adjacent["dec_share"].idxmax()], adjacent.loc[adjacent["dec_share"].idxmin()]
    one = adjacent["family"].nunique() == 1
    among = f"Among adjacent layers of the {best['family']} SAEs" if one else "Among adjacent layers"
    if len(adjacent) == 1:
        text = (f"{among}, {pct(best['dec_share'])} of features match for {_layer_pair(best, one)} (the only pair), "
                f"with an MMCS of {best['dec_mmcs']:.3f} against the random baseline's {rand_mmcs:.3f}.")
    else:
        text = (f"{among}, {pct(best['dec_share'])} of features match for {_layer_pair(best, one)}, against "
                f"{pct(worst['dec_share'])} for {_layer_pair(worst, one)}, whose MMCS of {worst['dec_mmcs']:.3f} "
                f"compares with the random baseline's {rand_mmcs:.3f}.")
    block = blocks.set_index("block")
    L = int(worst["layer_a"])
    if L in block.index:
        b, others = block.loc[L], block.drop(index=L)
        text += (f" Across block {L} the residual stream changes far more than a dictionary can follow: the block "
                 f"writes an output {b['ratio']:.1f} times the norm of its input (median over held-out tokens), the "
                 f"input keeps a mean cosine of {b['cos']:.2f} with the output stream, and explains "
                 f"{b['explained_variance']:.2f} of its variance (negative: worse than its mean)."
                 if b["explained_variance"] < 0 else
                 f" Across block {L} the block's output is {b['ratio']:.1f} times the norm of its input, the input "
                 f"keeps a mean cosine of {b['cos']:.2f} with the output stream and explains "
                 f"{pct(b['explained_variance'])} of its variance.")
        if len(others):
            text += (f" In the other blocks the output is {others['ratio'].min():.2f} to {others['ratio'].max():.2f} "
                     f"times the input, the cosine {others['cos'].min():.2f} to {others['cos'].max():.2f}, and the "
                     f"input explains {others['explained_variance'].min():.2f} to "
                     f"{others['explained_variance'].max():.2f} of the next stream's variance.")
    ctrl = None if controls is None else controls[controls["layer"] == L]
    if ctrl is not None and len(ctrl):
        pairs = "; ".join(f"{a} against {b}: {pct(s)} (MMCS {m:.3f})"
                          for a, b, s, m in zip(ctrl["a"], ctrl["b"], ctrl["dec_share"], ctrl["dec_mmcs"]))
        text += (f" Positive control, SAEs at layer {L} against each other: {pairs}. ")
        text += ("Layer-{L} dictionaries do match each other, so the empty match across block {L} is a property of the "
                 "stream, not of the SAEs." if ctrl["dec_share"].max() > 2 * max(worst["dec_share"], 0.005) else
                 "Even layer-{L} SAEs barely match each other, so the control does not separate the stream from the "
                 "SAEs.").format(L=L)
    elif L in block.index:
        text += f" No pair of SAEs at layer {L} is given for a positive control (`control_pairs`)."
    return text


def study_sentence(everything: pd.DataFrame) -> str:
    """Return the seed-against-dataset comparison with the study, and how much best match overstates one-to-one."""
    if everything.empty:
        return "No pairs were compared."
    mean = everything.groupby("comparison")["dec_share_small"].mean()
    text = ""
    if "seeds" in mean and "datasets" in mean:
        rel = "more" if mean["seeds"] > mean["datasets"] else "fewer"
        text = (f"In the study, SAEs trained on different datasets matched far fewer features than SAEs differing only "
                f"in their seed; here the mean seed pair matches {pct(mean['seeds'])} of features and the mean dataset "
                f"pair {pct(mean['datasets'])}: seeds share {rel}. ")
    both = everything.dropna(subset=["hungarian_share"])
    if len(both):
        gap = both["dec_share_small"] - both["hungarian_share"]
        worst = both.loc[gap.idxmax()]
        text += (f"Best match overstates one-to-one matching: averaged over the {len(both)} pairs matched both ways, the "
                 f"best-match share of the features Hungarian pairs (the smaller dictionary's, or both directions' mean "
                 f"for equal sizes) exceeds their one-to-one share by {100 * gap.mean():.1f} percentage points (at most "
                 f"{100 * gap.max():.1f}, for {worst['a']} / {worst['b']}), and the MMCS exceeds the one-to-one mean "
                 f"cosine by {float((both['dec_mmcs'] - both['hungarian_mean']).mean()):.3f}.")
    return text


def encoder_sentence(everything: pd.DataFrame, base: Dictionary) -> str:
    """Return how encoder matches compare with decoder matches over all pairs, and how far the base SAE's encoder
    columns are from its own decoder rows."""
    own = (f"Within one SAE a feature's encoder column is not its decoder row: in {base.label} their mean cosine is "
           f"{float(base.self_cosine.mean()):.3f}, so two SAEs that write the same direction may read it differently.")
    if everything.empty:
        return own
    return (f"Encoder directions match in {pct(float(everything['enc_share'].mean()))} of cases against "
            f"{pct(float(everything['dec_share'].mean()))} for decoder directions, on average over all pairs. " + own)


@dataclass
class MatchingResult:
    """Everything the matching chapter shows: display tables, figure frames and the values its prose cites."""

    values: dict[str, float | str]
    tables: dict[str, pd.DataFrame]  # display-ready: formatted, at most 7 columns, no NaN
    top_long: pd.DataFrame  # (pair, rank, cosine) for the top-cosine figure
    layer_matrix: pd.DataFrame  # (family, layer_a, layer_b, share, mmcs) for the heatmaps
    everything: pd.DataFrame  # one row per compared pair, with its comparison, for the comparison figure
    frames: dict[str, pd.DataFrame]  # the raw frames behind the tables (numbers, for tests): each comparison's pairs
    # under its name, and "random", "architecture_info", "live", "blocks", "adjacent", "controls"

    def glued(self) -> dict[str, float | str]:
        """Return the values the prose cites, by glue name."""
        v = dict(self.values)
        for name in COMPARISONS:  # best-match share (of the smaller dictionary) over each comparison's pairs
            if name in self.frames and len(self.frames[name]):
                share = self.frames[name]["dec_share_small"]
                v.update({f"match_{name}_min": float(share.min()), f"match_{name}_max": float(share.max()),
                          f"match_{name}_mean": float(share.mean())})
        if "widths" in self.frames and len(self.frames["widths"]):  # the pair of the containment sentence
            x = containment(self.frames["widths"]).sort_values(["d_sae_small", "d_sae_large"],
                                                               ascending=[True, False]).iloc[0]
            v.update({"match_contain_small_in_large": float(x["small in large"]),
                      "match_contain_large_in_small": float(x["large in small"])})
        adj = self.frames.get("adjacent", pd.DataFrame())
        if len(adj) and adj["layer_a"].nunique() > 1:  # adjacent-layer share from the first layer against the rest
            first = adj["layer_a"] == adj["layer_a"].min()
            v.update({"match_adjacent_first_layer": int(adj["layer_a"].min()),
                      "match_adjacent_first_share": float(adj.loc[first, "dec_share"].mean()),
                      "match_adjacent_later_share": float(adj.loc[~first, "dec_share"].mean())})
        return v

    def table(self, name: str):
        """Return a display table (a pandas Styler without index), or the sentence that replaces a skipped one."""
        from IPython.display import Markdown

        t = self.tables.get(name)
        if t is None or t.empty:
            return Markdown(f"*{self.values.get(f'match_{name}_sentence', 'Nothing to show for this release.')}*")
        return t.style.hide(axis="index")


def summary_sentence(results: dict[str, PairResults], rand_share: float, threshold: float) -> str:
    """Return the summary's first line: each comparison's range of decoder best-match shares, and the random floor."""
    what = {"datasets": "across corpus groups", "seeds": "across seeds", "widths": "between widths",
            "k": "between values of k", "architectures": "across architectures"}
    parts = [f"{pct_range(r.table['dec_share_small'])} {what[n]}" for n, r in results.items()]
    listed = "; ".join(parts) if parts else "no pairs compared"
    return f"Decoder matching at cosine {threshold:.2f}: {listed}; random directions: {pct(rand_share)}."


def _labels(refs: Sequence[SAERef], release: str) -> list[str]:
    return [ref_label(r, release) for r in refs]


def comparison_pairs(groups: Groups, dictionaries: dict[str, Dictionary], release: str) -> dict[str, list[tuple[str, str]]]:
    """Return the pairs of labels each comparison matches (widths oriented small -> large)."""
    return {"datasets": all_pairs(_labels(groups.ids["datasets"], release)),
            "seeds": [(ref_label(a, release), ref_label(b, release)) for a, b in groups.seed_pairs],
            "widths": width_pairs(dictionaries, _labels(groups.ids["widths"], release)),
            "k": all_pairs(_labels(groups.ids["k"], release)),
            "architectures": all_pairs(_labels(groups.ids["architectures"], release))}


def adjacent_frame(groups: Groups, dictionaries: dict[str, Dictionary], release: str,
                   opts: dict) -> tuple[pd.DataFrame, dict[tuple[str, str], TopCosines]]:
    """Return the match statistics of every family's adjacent layers, with family, layer_a and a 'L→L+1' label, and
    their decoder top cosines."""
    frames, tops = [], {}
    for fam, refs in groups.layers.items():
        labels = sorted(_labels(refs, release), key=lambda lab: dictionaries[lab].layer)
        res = match_pairs(list(zip(labels[:-1], labels[1:])), dictionaries, **opts, progress=False)
        la = [dictionaries[a].layer for a in res.table["a"]]
        lb = [dictionaries[b].layer for b in res.table["b"]]
        frames.append(res.table.assign(family=fam, layer_a=la, layers=[f"{a}→{b}" for a, b in zip(la, lb)]))
        tops.update(res.top)
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), tops


def seed_curve(release: str) -> tuple[str, pd.DataFrame | None]:
    """Return the sentence and table of a release's recorded seed curve (possae.organism.seed_curve), or the sentence
    saying none is recorded for it."""
    from possae.sae_files import ORGANISMS, read_seed_curve

    record = read_seed_curve(ORGANISMS[release]) if release in ORGANISMS else None
    if record is None:
        return (f"No seed pair retrained on other budgets is recorded for {release}, so whether its shares still rise "
                "with training tokens is not measured here.", None)
    return ("Every SAE of this suite starts from its own initial weights (its recipe's init_seed): sae_lens's trainer "
            "does not seed the SAE it builds, and loading the organism seeds torch, so without it every SAE of one width "
            "started from the same weights and a seed pair differed only in the order of its data. "
            + curve_sentence(record)), curve_table(record)


def curve_table(record: dict) -> pd.DataFrame:
    """Return the record's rows for display: tokens, decoder share both ways and their mean, one-to-one share, MMCS,
    the change in the mean share from the budget before."""
    rows = pd.DataFrame(record["rows"])
    return pd.DataFrame({"training tokens": [f"{t / 1e6:g}M" for t in rows["tokens"]],
                         "share A→B": rows["dec_share_ab"].map(fmt), "share B→A": rows["dec_share_ba"].map(fmt),
                         "mean share": rows["dec_share"].map(fmt), "one-to-one share": rows["hungarian_share"].map(fmt),
                         "MMCS": rows["dec_mmcs"].map(fmt), "change": rows["gain"].map(lambda x: fmt(x, "+.3f"))})


def curve_sentence(record: dict) -> str:
    """Return what the record shows: the mean decoder share at the smallest and largest budgets, and the change over
    the last step (whether the shares still rise at the largest budget)."""
    rows = pd.DataFrame(record["rows"])
    first, prev, last = rows.iloc[0], rows.iloc[-2] if len(rows) > 1 else rows.iloc[0], rows.iloc[-1]
    shipped = rows[rows["tokens"] == record.get("shipped_tokens")]
    m = lambda t: f"{t / 1e6:g}M"  # noqa: E731
    where = (f" ({100 * float(shipped['dec_share'].iloc[0]):.1f} % at the suite's own {m(record['shipped_tokens'])})"
             if len(shipped) else "")
    gain = float(last["dec_share"] - prev["dec_share"])
    trend = "still rising" if gain > 0 else "no longer rising"
    return (f"Retrained on {m(first['tokens'])} to {m(last['tokens'])} tokens, all else equal, the seed pair shares "
            f"{100 * first['dec_share']:.1f} % to {100 * last['dec_share']:.1f} % of its features{where}; from "
            f"{m(prev['tokens'])} to {m(last['tokens'])} tokens the share changes by {100 * gain:+.1f} points: the "
            f"shares are {trend} at {m(last['tokens'])} (this book's measurement, recorded by {record['command']}).")


def analyze(model, dictionaries: dict[str, Dictionary], tokens: Int[Tensor, "n_windows pos"],
            params: MatchingParams) -> MatchingResult:
    """Return the chapter's result: the chance baseline, each comparison's matches, the architectures' firing features,
    the layer-by-layer matches, the residual stream's change per block and the positive controls."""
    groups, rel = resolve_groups(params), params.sae_release
    label = lambda ref: ref_label(ref, rel)  # noqa: E731
    base = dictionaries[label(groups.base)]
    opts = dict(threshold=params.threshold, chunk_size=params.chunk_size, device=params.device,
                hungarian_max_features=params.hungarian_max_features)
    rand = random_directions(base.d_sae, base.decoder.shape[1], params.seed)
    rand_row, rand_top = match_pair(base, Dictionary("random", "random", "random", base.hook_name, "random", rand, rand),
                                    **opts)
    pairs = comparison_pairs(groups, dictionaries, rel)
    results = {name: match_pairs(p, dictionaries, **opts, progress=False) for name, p in pairs.items() if p}
    tables = {name: pair_table(r.table) for name, r in results.items()}
    tables["random"] = pair_table(pd.DataFrame([rand_row]))
    contain = containment(results["widths"].table) if "widths" in results else None
    if contain is not None:
        tables["containment"] = containment_table(contain)

    arch_labels = _labels(groups.ids["architectures"], rel)
    arch = architecture_frame(dictionaries, arch_labels)
    live = live_pair_frame(pairs["architectures"], dictionaries, params.threshold, params.chunk_size, params.device,
                           results["architectures"].table if "architectures" in results else None) \
        if pairs["architectures"] and all(dictionaries[a].firing is not None for a in arch_labels) else \
        pd.DataFrame(columns=["a", "b", "dec_all", "dec_live", "enc_all", "enc_live"])
    if len(arch):
        tables["architecture_info"] = architecture_table(arch)
    if len(live):
        tables["architecture_live"] = live_pair_table(live)

    shown = {next(iter(r.top)): r.top[next(iter(r.top))] for r in results.values()}
    long = pd.concat([top_cosines_long(shown), top_cosines_long({(base.label, "random"): rand_top})], ignore_index=True)
    second = (long[(long["rank"] == 2) & (long["pair"] != f"{base.label} → random")].groupby("pair", sort=False)["cosine"]
              .apply(lambda c: float((c >= params.threshold).mean())))

    adjacent, adjacent_tops = adjacent_frame(groups, dictionaries, rel, opts)
    layer_mat = pd.concat([layer_matrix(dictionaries, _labels(refs, rel), params.threshold, params.chunk_size,
                                        params.device, adjacent_only=not params.all_layer_pairs, progress=False,
                                        tops=adjacent_tops)
                           .assign(family=fam) for fam, refs in groups.layers.items()], ignore_index=True) \
        if groups.layers else pd.DataFrame(columns=["family", "layer_a", "layer_b", "share", "mmcs"])
    blocks = block_changes(model, tokens, sorted(set(adjacent["layer_a"]))) if len(adjacent) else pd.DataFrame(
        columns=["block", "cos", "ratio", "explained_variance"])
    ctrl_pairs = [(label(a), label(b)) for a, b in groups.controls]
    controls = match_pairs(ctrl_pairs, dictionaries, **opts, progress=False).table if ctrl_pairs else None
    if controls is not None:
        controls = controls.assign(layer=[dictionaries[a].layer for a in controls["a"]])
        tables["controls"] = pair_table(controls)
    if len(adjacent):
        tables["adjacent"] = adjacent_table(adjacent)
        tables["blocks"] = block_table(blocks)

    frames = [r.table.assign(comparison=name) for name, r in results.items()]
    if len(adjacent):
        frames.append(adjacent.drop(columns=["family", "layers", "layer_a"]).assign(
            comparison=[f"layers ({f})" for f in adjacent["family"]]))
    everything = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["comparison", "a", "b", "dec_share", "dec_share_small", "dec_mmcs", "enc_share", "hungarian_share",
                 "hungarian_mean"])
    if len(everything):
        tables["overview"] = overview_frame(everything)
    values: dict[str, float | str] = {
        "match_n_saes": len(dictionaries), "match_threshold": params.threshold, "match_base": base.label,
        "match_base_hook": base.hook_name, "match_chunk": params.chunk_size, "match_best_kept": TOP_K, "match_dense_side": math.isqrt(DENSE_MAX_CELLS), "match_d_in": base.decoder.shape[1],
        "match_sigmas": params.threshold * float(np.sqrt(base.decoder.shape[1])), "match_base_d_sae": base.d_sae,
        "match_rand_mmcs": rand_row["dec_mmcs"], "match_rand_share": rand_row["dec_share"],
        "match_rand_hmean_sentence": (f"its one-to-one mean cosine {rand_row['hungarian_mean']:.3f}"
                                      if np.isfinite(rand_row["hungarian_mean"]) else
                                      "one-to-one matching was skipped (too many features)"),
        "match_n_tokens": int(tokens[:, 1:].numel()),
        **{f"match_{name}_sentence": share_sentence(name, results[name].table if name in results else None,
                                                    params.threshold, rel) for name in COMPARISONS},
        "match_containment_sentence": containment_sentence(contain, rel),
        "match_architectures_info_sentence": architecture_sentence(arch, live, rel),
        "match_second_sentence": second_sentence(second),
        "match_layers_sentence": layer_sentence(adjacent, blocks, controls, rand_row["dec_mmcs"], rel),
        "match_distance_sentence": distance_sentence(layer_mat, rel),
        "match_study_sentence": study_sentence(everything),
        "match_encoder_sentence": encoder_sentence(everything, base),
    }
    values["match_summary_sentence"] = summary_sentence(results, rand_row["dec_share"], params.threshold)
    curve = seed_curve(rel)
    values["match_seed_curve_sentence"] = curve[0]
    if curve[1] is not None:
        tables["seed_curve"] = curve[1]
    return MatchingResult(values, tables, long, layer_mat, everything,
                          {"random": pd.DataFrame([rand_row]), "architecture_info": arch, "live": live, "blocks": blocks,
                           "adjacent": adjacent, "controls": controls if controls is not None else pd.DataFrame(),
                           **{name: r.table for name, r in results.items()}})

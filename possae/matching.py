"""Feature matching between SAE dictionaries: each feature's best decoder (or encoder) cosine in another dictionary,
computed in row chunks that keep only the top-k values, the share matched above a threshold, the mean max cosine
similarity (MMCS), one-to-one Hungarian matching, and groups of SAEs (datasets, seeds, widths, k, architectures,
layers) resolved against a release."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from possae.devices import default_device
from possae.progress import tqdm

THRESHOLD = 0.7  # the study's cosine threshold for "a feature has a match"
TOP_K = 4  # each feature's 1st..4th best cosines are kept
CHUNK_SIZE = 2048  # rows of the first dictionary per matmul: 2048 x 24,576 float32 is 200 MB
HUNGARIAN_MAX_FEATURES = 32_768  # Hungarian needs the full (n_a x n_b) float64 matrix: 24,576^2 is 4.8 GB, minutes

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
    """One SAE's unit decoder and encoder directions and where it reads."""

    label: str
    release: str
    sae_id: str
    hook_name: str
    architecture: str
    decoder: Float[Tensor, "d_sae d_in"]
    encoder: Float[Tensor, "d_sae d_in"]
    l0: float | None = None  # active features per token, where the SAE's metadata records it

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return self.decoder.shape[0]

    @property
    def layer(self) -> int:
        """Block index of the hook, counting blocks.L.hook_resid_post as entering block L+1."""
        from possae.hooks import hook_layer

        return hook_layer(self.hook_name) + (1 if self.hook_name.endswith(".hook_resid_post") else 0)


def dictionary_from_sae(sae, label: str, release: str = "", sae_id: str = "") -> Dictionary:
    """Return a Dictionary holding an SAE's unit decoder and encoder directions (on the CPU), its trained
    architecture and L0 where its metadata records them."""
    l0 = getattr(sae.cfg.metadata, "l0", None)
    # sae_lens saves a BatchTopK SAE as JumpReLU for inference: name the architecture it was trained as, where recorded
    arch = getattr(sae.cfg.metadata, "training_architecture", None) or sae.cfg.architecture()
    return Dictionary(label=label, release=release, sae_id=sae_id or label,
                      hook_name=str(sae.cfg.metadata.hook_name), architecture=str(arch),
                      decoder=decoder_directions(sae).cpu(), encoder=encoder_directions(sae).cpu(),
                      l0=None if l0 is None else float(l0))


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
    """Return whether an SAE id is known in its release: the organism's shipped ids, a local folder, or sae_lens's registry."""
    from possae.loaders import ORGANISM, organism_sae_ids

    release, sae_id = ref
    if release == ORGANISM:
        return sae_id in organism_sae_ids()
    if Path(release).is_dir():
        return (Path(release) / sae_id / "cfg.json").is_file()
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    return release in directory and sae_id in directory[release].saes_map


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
        }
    if release == "gpt2-small-res-jb":
        return {
            "dataset_ids": [],
            "seed_pairs": [],
            "width_ids": [(FEATURE_SPLITTING, f"blocks.8.hook_resid_pre_{w}") for w in (3072, 6144, 12288, 24576)],
            "k_ids": [],
            "architecture_ids": ["blocks.8.hook_resid_pre", (GPT2_TOPK, "blocks.7.hook_resid_post")],
            "layer_ids": {"ReLU (jb)": [f"blocks.{i}.hook_resid_pre" for i in range(12)]},
        }
    return {"dataset_ids": [], "seed_pairs": [], "width_ids": [], "k_ids": [], "architecture_ids": [],
            "layer_ids": {}}


def load_dictionaries(refs: Iterable[SAERef], release: str, device: str | None = None,
                      progress: bool = True) -> dict[str, Dictionary]:
    """Return {label: Dictionary} for each distinct SAE ref, loaded through possae.loaders.load_sae (weights only)."""
    from possae.loaders import load_sae

    out: dict[str, Dictionary] = {}
    refs = list(dict.fromkeys(refs))
    for ref in tqdm(refs, desc="loading SAEs", disable=not progress or len(refs) < 2):
        label = ref_label(ref, release)
        if label not in out:
            sae = load_sae(ref[0], ref[1], device=device or "cpu")
            out[label] = dictionary_from_sae(sae, label, *ref)
            del sae
    return out


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
    """Return the top-k cosines of every row of a among b's rows and of every row of b among a's, from one pass over
    row chunks of a (rows normalised here; a chunk x n_b block is the largest thing held)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Dictionaries must be (n, d) with the same d; got {tuple(a.shape)} and {tuple(b.shape)}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    device = default_device(device)
    a, b = unit_rows(a).to(device), unit_rows(b).to(device)
    n_a, n_b = a.shape[0], b.shape[0]
    k_a, k_b = min(k, n_b), min(k, n_a)
    a_values = torch.empty(n_a, k_a, device=device)
    a_indices = torch.empty(n_a, k_a, dtype=torch.long, device=device)
    b_values = torch.full((k_b, n_b), -float("inf"), device=device)
    b_indices = torch.zeros(k_b, n_b, dtype=torch.long, device=device)
    for start in range(0, n_a, chunk_size):
        cos = a[start : start + chunk_size] @ b.T  # (chunk, n_b)
        a_values[start : start + len(cos)], a_indices[start : start + len(cos)] = cos.topk(k_a, dim=1)
        v, i = cos.topk(min(k_b, len(cos)), dim=0)
        merged_v, merged_i = torch.cat([b_values, v]), torch.cat([b_indices, i + start])
        b_values, sel = merged_v.topk(k_b, dim=0)
        b_indices = merged_i.gather(0, sel)
    return TopCosines(a_values.cpu(), a_indices.cpu(), b_values.T.contiguous().cpu(), b_indices.T.contiguous().cpu())


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
    """A one-to-one matching: a's feature rows[i] is paired with b's cols[i] at cosine cosines[i]."""

    rows: Int[np.ndarray, "n_pairs"]
    cols: Int[np.ndarray, "n_pairs"]
    cosines: Float[np.ndarray, "n_pairs"]


def hungarian_match(a: Float[Tensor, "n_a d"], b: Float[Tensor, "n_b d"], chunk_size: int = CHUNK_SIZE,
                    device: str | None = None) -> Assignment:
    """Return the one-to-one matching of min(n_a, n_b) pairs that maximises the summed cosine (scipy's
    linear_sum_assignment on the full float64 matrix, built with the smaller dictionary as rows)."""
    if a.shape[0] > b.shape[0]:
        m = hungarian_match(b, a, chunk_size, device)
        order = np.argsort(m.cols, kind="stable")
        return Assignment(m.cols[order], m.rows[order], m.cosines[order])
    cost = cosine_matrix(a, b, chunk_size, device, np.float64, negate=True)  # minimise -cos: no copy in scipy
    rows, cols = linear_sum_assignment(cost)
    return Assignment(rows, cols, -cost[rows, cols])


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


def hungarian_stats(assignment: Assignment, threshold: float = THRESHOLD) -> dict[str, float]:
    """Return the mean matched cosine and the share of matched pairs at or above the threshold."""
    c = assignment.cosines
    return {"hungarian_mean": float(c.mean()), "hungarian_share": float((c >= threshold).mean())}


def match_pair(a: Dictionary, b: Dictionary, threshold: float = THRESHOLD, k: int = TOP_K,
               chunk_size: int = CHUNK_SIZE, device: str | None = None, encoder: bool = True,
               hungarian_max_features: int | None = HUNGARIAN_MAX_FEATURES) -> tuple[dict, TopCosines]:
    """Return (one row of statistics, the decoder top-k cosines) for a pair of dictionaries: decoder best-match share
    and MMCS both ways and for the smaller dictionary's features (`dec_share_small`, the side Hungarian matching pairs
    in full, so that `hungarian_share <= dec_share_small`), the same for encoders, and decoder Hungarian matching
    unless a dictionary exceeds the limit."""
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
        row.update(hungarian_stats(hungarian_match(a.decoder, b.decoder, chunk_size, device), threshold))
    else:
        row.update({"hungarian_mean": float("nan"), "hungarian_share": float("nan")})
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


def containment(table: pd.DataFrame) -> pd.DataFrame:
    """Return, per (small, large) pair, the share of the small dictionary's features with a decoder match in the large
    one, the reverse, and the Hungarian share (pairs are oriented so that a is the smaller)."""
    swap = table["d_sae_a"] > table["d_sae_b"]
    small = np.where(swap, table["b"], table["a"])
    large = np.where(swap, table["a"], table["b"])
    return pd.DataFrame({
        "small": small, "large": large,
        "d_sae_small": np.where(swap, table["d_sae_b"], table["d_sae_a"]),
        "d_sae_large": np.where(swap, table["d_sae_a"], table["d_sae_b"]),
        "small in large": np.where(swap, table["dec_share_ba"], table["dec_share_ab"]),
        "large in small": np.where(swap, table["dec_share_ab"], table["dec_share_ba"]),
        "MMCS small→large": np.where(swap, table["dec_mmcs_ba"], table["dec_mmcs_ab"]),
        "MMCS large→small": np.where(swap, table["dec_mmcs_ab"], table["dec_mmcs_ba"]),
        "Hungarian share": table["hungarian_share"],
    })


def top_cosines_long(tops: dict[tuple[str, str], TopCosines], direction: str = "ab") -> pd.DataFrame:
    """Return a long frame (pair, rank 1..k, cosine) of each feature's k best cosines in the other dictionary."""
    frames = []
    for (la, lb), top in tops.items():
        values = (top.a_values if direction == "ab" else top.b_values).numpy()
        name = f"{la} → {lb}" if direction == "ab" else f"{lb} → {la}"
        for r in range(values.shape[1]):
            frames.append(pd.DataFrame({"pair": name, "rank": r + 1, "cosine": values[:, r]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["pair", "rank", "cosine"])


def layer_matrix(dictionaries: dict[str, Dictionary], labels: Sequence[str], threshold: float = THRESHOLD,
                 chunk_size: int = CHUNK_SIZE, device: str | None = None, adjacent_only: bool = False,
                 progress: bool = True) -> pd.DataFrame:
    """Return, for each ordered pair of a family's layers (row layer's features looked up in the column layer's
    dictionary), the decoder share above threshold and MMCS; one chunked pass per unordered pair, the diagonal 1."""
    layers = [dictionaries[lab].layer for lab in labels]
    rows = [{"layer_a": la, "layer_b": la, "a": lab, "b": lab, "share": 1.0, "mmcs": 1.0}
            for lab, la in zip(labels, layers)]
    pairs = [(i, j) for i, j in itertools.combinations(range(len(labels)), 2) if not adjacent_only or j == i + 1]
    for i, j in tqdm(pairs, desc="layers", disable=not progress or len(pairs) < 2):
        s = best_match_stats(top_cosines(dictionaries[labels[i]].decoder, dictionaries[labels[j]].decoder, 1,
                                         chunk_size, device), threshold)
        rows.append({"layer_a": layers[i], "layer_b": layers[j], "a": labels[i], "b": labels[j],
                     "share": s["share_ab"], "mmcs": s["mmcs_ab"]})
        rows.append({"layer_a": layers[j], "layer_b": layers[i], "a": labels[j], "b": labels[i],
                     "share": s["share_ba"], "mmcs": s["mmcs_ba"]})
    return pd.DataFrame(rows).sort_values(["layer_a", "layer_b"], ignore_index=True)


DISPLAY_COLUMNS = {  # column of a match table: its heading in the book
    "a": "A", "b": "B", "d_sae_a": "d_sae A", "d_sae_b": "d_sae B",
    "dec_share_ab": "dec share A→B", "dec_share_ba": "dec share B→A", "dec_mmcs": "dec MMCS",
    "enc_share": "enc share", "enc_mmcs": "enc MMCS",
    "hungarian_share": "Hungarian share", "hungarian_mean": "Hungarian mean cos",
}


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Return a match table's headline columns under readable headings."""
    cols = [c for c in DISPLAY_COLUMNS if c in table.columns]
    return table[cols].rename(columns=DISPLAY_COLUMNS)


def dictionary_table(dictionaries: dict[str, Dictionary], labels: Sequence[str]) -> pd.DataFrame:
    """Return one row per dictionary: label, architecture, hook, d_sae and L0 (NaN where unrecorded)."""
    return pd.DataFrame([{"SAE": lab, "architecture": dictionaries[lab].architecture,
                          "hook": dictionaries[lab].hook_name, "d_sae": dictionaries[lab].d_sae,
                          "L0": np.nan if dictionaries[lab].l0 is None else dictionaries[lab].l0} for lab in labels])

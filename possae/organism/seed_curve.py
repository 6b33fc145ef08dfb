"""Seed matching against training tokens (issue 21): the matching suite's seed pair (match-base, match-seed2) retrained
on each budget of recipe.SEED_CURVE_TOKENS, all else equal, and matched as the matching chapter matches its seed pair;
the record says whether the shares are still rising at the shipped budget.

    possae organism seed-curve   # trains into build/organism/seed-curve, writes possae/artifacts/organism/SEED_CURVE_FILE

The retrained SAEs are not shipped (only the record is); the budget the suite was trained on reuses its shipped pair.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from possae.corpora import CORPUS_NAMES
from possae.organism.recipe import ARTIFACTS, SAERecipe, build_dir, matching_saes, seed_curve_saes
from possae.organism.saes import SAE_DIR
from possae.sae_files import SEED_CURVE_FILE, files_sha256, write_record

COMMAND = "possae organism seed-curve"


def curve_rows(pairs: dict[int, tuple[object, object]]) -> pd.DataFrame:
    """Return per training budget (tokens) the seed pair's match statistics (matching.match_pair: decoder best-match
    share both ways and their mean, MMCS, encoder share, one-to-one share), in budget order, with the change in the
    mean decoder share from the budget before (`gain`)."""
    from possae.matching import dictionary_from_sae, match_pair

    rows = []
    for tokens in sorted(pairs):
        a, b = (dictionary_from_sae(sae, label) for sae, label in zip(pairs[tokens], ("a", "b")))
        row, _ = match_pair(a, b)
        rows.append({"tokens": tokens, **{k: row[k] for k in ("dec_share_ab", "dec_share_ba", "dec_share",
                                                              "dec_mmcs", "enc_share", "hungarian_share")}})
    df = pd.DataFrame(rows)
    return df.assign(gain=df["dec_share"].diff())


def shipped_fingerprint(ids: list[str], out_dir: Path = ARTIFACTS) -> str:
    """Return the SHA-256 of the shipped SAEs' weights that the record's own budget reads."""
    return files_sha256(out_dir / SAE_DIR / sid / "sae_weights.safetensors" for sid in ids)


def run_seed_curve(device: str | None = None, out_dir: Path = ARTIFACTS, work_dir: Path | None = None,
                   budgets: tuple[tuple[int, SAERecipe, SAERecipe], ...] | None = None,
                   suite: set[str] | None = None, corpora: tuple[str, ...] = CORPUS_NAMES) -> Path:
    """Train every seed-curve SAE not yet trained (into work_dir/seed-curve; the suite's own pair, ids in `suite`, is
    read from out_dir), match each budget's pair, and write the record (out_dir/SEED_CURVE_FILE); return its path. A
    failed run leaves the last record in place."""
    from sae_lens import SAE

    from possae.organism.saes import train_sae

    budgets = budgets or seed_curve_saes()
    suite = {r.sae_id for r in matching_saes()} if suite is None else suite
    folder = (work_dir or build_dir()) / "seed-curve"
    folder.mkdir(parents=True, exist_ok=True)
    where = {}
    for _, *pair in budgets:
        for r in pair:
            where[r.sae_id] = out_dir / SAE_DIR / r.sae_id if r.sae_id in suite else folder / r.sae_id
            if r.sae_id not in suite and not (folder / r.sae_id / "cfg.json").is_file():
                facts = train_sae(r, device=device, out_dir=out_dir, work_dir=work_dir, corpora=corpora)
                shutil.rmtree(folder / r.sae_id, ignore_errors=True)
                (out_dir / SAE_DIR / r.sae_id).rename(folder / r.sae_id)  # the curve's SAEs are not shipped
                print(json.dumps({k: facts[k] for k in ("sae_id", "train_seconds")}), flush=True)
    pairs = {t: tuple(SAE.load_from_disk(str(where[r.sae_id]), device="cpu") for r in pair) for t, *pair in budgets}
    own = next(((t, [r.sae_id for r in pair]) for t, *pair in budgets if pair[0].sae_id in suite), (None, []))
    record = {"ids": {str(t): [r.sae_id for r in pair] for t, *pair in budgets}, "shipped_tokens": own[0],
              "shipped_sha256": shipped_fingerprint(own[1], out_dir) if own[1] else None,
              "rows": curve_rows(pairs).to_dict(orient="records"), "command": COMMAND}
    return write_record(out_dir, SEED_CURVE_FILE, record)

"""Links from the features the book shows to their Neuronpedia pages (plain links: nothing loads until clicked)."""

from __future__ import annotations

from functools import lru_cache

import pandas as pd

NEURONPEDIA = "https://www.neuronpedia.org"


@lru_cache(maxsize=64)
def neuronpedia_id(release: str, sae_id: str) -> str | None:
    """Return the Neuronpedia id sae_lens's registry gives an SAE (e.g. 'gpt2-small/0-res-jb'), or None."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    entry = get_pretrained_saes_directory().get(release)
    if entry is None or not entry.neuronpedia_id:
        return None
    return entry.neuronpedia_id.get(sae_id)


def feature_url(release: str, sae_id: str, feature: int) -> str | None:
    """Return the Neuronpedia page of one feature of an SAE, or None when Neuronpedia has no page for that SAE."""
    np_id = neuronpedia_id(release, sae_id)
    return None if np_id is None else f"{NEURONPEDIA}/{np_id}/{int(feature)}"


def feature_link(release: str, sae_id: str, feature: int) -> str:
    """Return the feature id as an HTML link to its Neuronpedia page, or the plain id when there is none."""
    url = feature_url(release, sae_id, feature)
    return str(int(feature)) if url is None else f'<a href="{url}" target="_blank" rel="noopener">{int(feature)}</a>'


def link_features(frame: pd.DataFrame, release: str, sae_id: str, column: str = "feature") -> pd.DataFrame:
    """Return a copy of a table whose feature ids (a column, or the index when it is named `column`) link to Neuronpedia."""
    out = frame.copy()
    if column in out.columns:
        out[column] = [feature_link(release, sae_id, f) for f in out[column]]
    elif out.index.name == column:
        out.index = pd.Index([feature_link(release, sae_id, f) for f in out.index], name=column)
    else:
        raise KeyError(f"the table has no column or index named {column!r}.")
    return out

"""Links from the features the book shows to their Neuronpedia pages (plain links: nothing loads until clicked)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

NEURONPEDIA = "https://www.neuronpedia.org"


@lru_cache(maxsize=64)
def neuronpedia_id(release: str, sae_id: str) -> str | None:
    """Return the Neuronpedia id sae_lens's registry gives an SAE (e.g. 'gpt2-small/0-res-jb'), or None (without reading
    the registry, a 2-second YAML parse, for possae's organisms)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from possae.sae_files import ORGANISMS

    if release in ORGANISMS:
        return None
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


@dataclass(frozen=True)
class FeaturePages:
    """The Neuronpedia pages of one SAE's features (none for an SAE Neuronpedia does not host, e.g. the organism)."""

    release: str
    sae_id: str

    @property
    def np_id(self) -> str | None:
        """Return the SAE's Neuronpedia id (e.g. 'gpt2-small/0-res-jb'), or None when Neuronpedia does not host it."""
        return neuronpedia_id(self.release, self.sae_id)

    @property
    def hosted(self) -> bool:
        """Return whether Neuronpedia has pages for this SAE's features."""
        return self.np_id is not None

    def url(self, feature: int) -> str | None:
        """Return one feature's page, or None."""
        return None if self.np_id is None else f"{NEURONPEDIA}/{self.np_id}/{int(feature)}"

    def link(self, feature: int) -> str:
        """Return the feature id as an anchor to its page, or the plain id."""
        return feature_link(self.release, self.sae_id, feature) if self.hosted else str(int(feature))

    def hover(self, feature: int) -> str:
        """Return the hover label of a feature: 'feature 42', with its Neuronpedia page's id when there is one."""
        return f"feature {int(feature)}" + ("" if self.np_id is None else f" (Neuronpedia {self.np_id}/{int(feature)})")

    def urls(self, features: Iterable[int]) -> list[str | None]:
        """Return each feature's page (a figure trace's customdata), or Nones."""
        return [self.url(f) for f in features]

    def table(self, frame: pd.DataFrame, column: str = "feature") -> pd.DataFrame:
        """Return the table with its feature ids (a column, or the index so named) as anchors; unchanged when not hosted."""
        return link_features(frame, self.release, self.sae_id, column) if self.hosted else frame

    def note(self, features: Iterable[int], what: str = "Neuronpedia pages of the features drawn") -> "LinkedHTML | None":
        """Return a line of links to the features' pages (for a figure whose ids no table lists), or None."""
        feats = list(dict.fromkeys(int(f) for f in features))
        if not self.hosted or not feats:
            return None
        return LinkedHTML(f"<p>{what}: " + ", ".join(self.link(f) for f in feats) + ".</p>")

    def sentence(self, where: str = "the tables") -> str:
        """Return the sentence telling the reader where a feature id can be clicked (`where` the links are), for this SAE."""
        if not self.hosted:
            return f"Neuronpedia hosts no pages for this SAE ({self.release}), so feature ids are plain numbers."
        return (f"Every feature id in {where} links to its page on Neuronpedia ({self.np_id}), opened only when "
                "clicked; in the figures the hover text names that page instead, because plotly's hover labels "
                "cannot be clicked.")

    def glued(self, prefix: str, where: str = "the tables") -> dict[str, str]:
        """Return the chapter's '<prefix>_links_sentence' glue value."""
        return {f"{prefix}_links_sentence": self.sentence(where)}


@dataclass(frozen=True)
class LinkedHTML:
    """HTML that holds anchors (shown as HTML, so the <a> tags stay links; text/plain shows the bare text)."""

    html: str

    def _repr_html_(self) -> str:
        """Return the HTML."""
        return self.html

    def __repr__(self) -> str:
        """Return the HTML with its tags stripped."""
        return re.sub(r"<[^>]+>", "", self.html)


def _is_anchor(v: object) -> bool:
    """Return whether a table value is one of link_features's anchors."""
    return isinstance(v, str) and v.startswith("<a href=")


def has_links(frame: pd.DataFrame) -> bool:
    """Return whether any cell or index label of a table holds an anchor."""
    cells = [frame.index.tolist(), frame.columns.tolist(), frame.to_numpy().ravel().tolist()]
    return any(_is_anchor(v) for part in cells for v in part)


def _escape_all_but_anchors(v: object) -> object:
    """Return a table value HTML-escaped (a token such as '<|endoftext|>' stays text), anchors left as they are."""
    return html.escape(v, quote=False) if isinstance(v, str) and not _is_anchor(v) else v


def show(frame: pd.DataFrame) -> "pd.DataFrame | LinkedHTML":
    """Return a table ready to display: unchanged without anchors, else its HTML with only the anchors unescaped."""
    if not has_links(frame):
        return frame
    out = frame.map(_escape_all_but_anchors)
    if isinstance(out.index, pd.MultiIndex):
        out.index = out.index.set_levels([lvl.map(_escape_all_but_anchors) for lvl in out.index.levels])
    else:
        out.index = out.index.map(_escape_all_but_anchors)
    with pd.option_context("display.max_colwidth", None):  # an anchor cut short would be broken HTML
        return LinkedHTML(out.to_html(escape=False, notebook=True))


NO_PAGES = FeaturePages("", "")  # an SAE without Neuronpedia pages: plain ids, no links (the figures' default)


def trace_links(pages: FeaturePages | None, features: Iterable[int]) -> dict:
    """Return a plotly trace's customdata of the features' Neuronpedia pages (one per point), or {} when none exist."""
    pages = pages or NO_PAGES
    return {"customdata": pages.urls(features)} if pages.hosted else {}

"""Neuronpedia links of the gpt2 profile's features; none for SAEs Neuronpedia does not host."""

import pandas as pd
import pytest

from possae.neuronpedia import feature_link, feature_url, link_features


def test_feature_urls_follow_the_registry():
    """gpt2-small-res-jb layer 0 feature 42 -> neuronpedia.org/gpt2-small/0-res-jb/42; the organism has no page."""
    assert feature_url("gpt2-small-res-jb", "blocks.0.hook_resid_pre", 42) == (
        "https://www.neuronpedia.org/gpt2-small/0-res-jb/42")
    assert feature_url("gpt2-small-res-jb", "blocks.11.hook_resid_post", 7).endswith("/gpt2-small/12-res-jb/7")
    assert feature_url("organism", "relu-short", 3) is None and feature_link("organism", "relu-short", 3) == "3"


def test_the_organisms_are_answered_without_sae_lens_registry(monkeypatch):
    """possae's organisms have no Neuronpedia pages: the answer comes without parsing sae_lens's registry."""
    import sae_lens.loading.pretrained_saes_directory as directory

    from possae.neuronpedia import neuronpedia_id
    from possae.sae_files import ORGANISMS

    def refuse():
        raise AssertionError("sae_lens's registry was read")

    monkeypatch.setattr(directory, "get_pretrained_saes_directory", refuse)
    neuronpedia_id.cache_clear()
    assert [neuronpedia_id(o, "relu-short") for o in ORGANISMS] == [None] * len(ORGANISMS)
    with pytest.raises(AssertionError, match="registry was read"):
        neuronpedia_id("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
    neuronpedia_id.cache_clear()


def test_link_features_rewrites_a_column_or_the_index():
    """Column and index forms both become anchors; a table without feature ids raises."""
    df = pd.DataFrame({"feature": [1, 2], "r2": [0.5, 0.9]})
    linked = link_features(df, "gpt2-small-res-jb", "blocks.3.hook_resid_pre")
    assert linked["feature"].tolist()[0] == (
        '<a href="https://www.neuronpedia.org/gpt2-small/3-res-jb/1" target="_blank" rel="noopener">1</a>')
    by_index = link_features(df.set_index("feature"), "gpt2-small-res-jb", "blocks.3.hook_resid_pre")
    assert by_index.index[1].startswith('<a href="https://www.neuronpedia.org/gpt2-small/3-res-jb/2"')
    with pytest.raises(KeyError, match="no column or index named 'feature'"):
        link_features(df.rename(columns={"feature": "f"}), "gpt2-small-res-jb", "blocks.3.hook_resid_pre")


# ---------------------------------------------------------------- wired into the book's tables and figures

GPT2 = ("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
URL = "https://www.neuronpedia.org/gpt2-small/0-res-jb/{}"


def anchor(f: int) -> str:
    """The anchor a gpt2 layer-0 feature id becomes."""
    return f'<a href="{URL.format(f)}" target="_blank" rel="noopener">{f}</a>'


def test_feature_pages_of_gpt2_and_of_the_organism():
    """gpt2's layer-0 jb SAE has pages (links, hover names, a note, a sentence); the organism and a folder have none."""
    from possae.neuronpedia import FeaturePages

    p = FeaturePages(*GPT2)
    assert (p.np_id, p.url(7), p.link(7)) == ("gpt2-small/0-res-jb", URL.format(7), anchor(7))
    assert p.hover(7) == "feature 7 (Neuronpedia gpt2-small/0-res-jb/7)"
    assert p.note([3, 3, 9])._repr_html_() == f"<p>Neuronpedia pages of the features drawn: {anchor(3)}, {anchor(9)}.</p>"
    assert repr(p.note([3])) == "Neuronpedia pages of the features drawn: 3."
    assert p.glued("pos") == {"pos_links_sentence": (
        "Every feature id in the tables links to its page on Neuronpedia (gpt2-small/0-res-jb), opened only when "
        "clicked; in the figures the hover text names that page instead, because plotly's hover labels cannot be "
        "clicked.")}
    assert FeaturePages("gpt2-small-res-jb", "blocks.5.hook_resid_pre").url(1) == (
        "https://www.neuronpedia.org/gpt2-small/5-res-jb/1")
    for none in (FeaturePages("organism", "relu-short"), FeaturePages("/tmp", "some-folder")):
        assert not none.hosted and none.link(7) == "7" and none.hover(7) == "feature 7" and none.note([7]) is None
        df = pd.DataFrame({"feature": [7]})
        assert none.table(df) is df
    assert FeaturePages("organism", "relu-short").sentence() == (
        "Neuronpedia hosts no pages for this SAE (organism), so feature ids are plain numbers.")
    assert p.note([]) is None


def test_show_renders_anchors_unescaped_and_leaves_plain_tables_alone():
    """A plain DataFrame would escape the <a> tag; show() keeps it a link, and returns a table without links as is."""
    from possae.neuronpedia import LinkedHTML, show

    plain = pd.DataFrame({"R²_pos": [0.9]}, index=pd.Index([5], name="feature"))
    assert show(plain) is plain
    linked = link_features(plain, *GPT2)
    assert "&lt;a href" in linked.to_html()  # what displaying the frame itself would do
    html = show(linked)
    assert isinstance(html, LinkedHTML)
    assert f"<th>{anchor(5)}</th>" in html._repr_html_() and "&lt;a" not in html._repr_html_()
    assert 'class="dataframe"' in html._repr_html_()  # looks like the book's other tables
    tokens = link_features(pd.DataFrame({"feature": [5], "token": ["<|endoftext|>"]},
                                        index=pd.MultiIndex.from_tuples([("<b>", 1)], names=["t", "rank"])), *GPT2)
    out = show(tokens)._repr_html_()  # every other value is still escaped: a token is text, not markup
    assert "&lt;|endoftext|&gt;" in out and "&lt;b&gt;" in out and f"<td>{anchor(5)}</td>" in out


def test_positional_top_table_links_on_gpt2_only():
    """The top-feature table's index: anchors to gpt2-small/0-res-jb/<id> on gpt2, plain ids on the organism."""
    import torch

    from possae.neuronpedia import FeaturePages, show
    from possae.positional import top_table

    scores = pd.DataFrame({"r2_pos": [0.1, 0.95, 0.8], "r2_tok": [0.5, 0.01, 0.1], "peak_position": [3, 7, 9],
                           "peak_width": [4, 1, 2], "max_firing_rate": [0.2, 0.3, 0.4]},
                          index=pd.RangeIndex(3, name="feature"))
    top = torch.tensor([1, 2])
    linked = top_table(scores, top, FeaturePages(*GPT2))
    assert linked.index.tolist() == [anchor(1), anchor(2)] and linked.index.name == "feature"
    assert linked["peak position"].tolist() == [7, 9] and len(linked.columns) + linked.index.nlevels <= 7
    assert f"<th>{anchor(2)}</th>" in show(linked)._repr_html_()
    organism = top_table(scores, top, FeaturePages("organism", "relu-short"))
    assert organism.index.tolist() == [1, 2]
    assert organism.equals(top_table(scores, top)) and show(organism) is organism


def _semantic_frames():
    top = pd.DataFrame({"label": ["' the'", "' the'"], "rank": [1, 2], "feature": [11, 4],
                        "mean_activation": [2.0, 1.0], "r2_tok": [0.9, 0.8], "r2_pos": [0.01, 0.02], "cv": [0.1, 0.2]})
    best = pd.DataFrame({"top_labels": [["' a'", "' b'"]], "r2_tok": [0.9], "r2_pos": [0.001], "top_mean": [1.5],
                         "cv": [0.01], "cv_top_n": [0.02]}, index=pd.Index([23], name="feature"))
    return top, best


def test_semantic_tables_link_on_gpt2_only():
    """The tokens' top features (a column) and the invariant features (the index) link on gpt2, not on the organism;
    the invariant table's Styler, as the chapter shows it, keeps the anchor unescaped."""
    from possae.neuronpedia import FeaturePages, show
    from possae.semantic import invariant_table, top_features_table

    top, best = _semantic_frames()
    linked = top_features_table(top, FeaturePages(*GPT2))
    assert linked["feature"].tolist() == [anchor(11), anchor(4)] and len(linked.columns) + linked.index.nlevels <= 7
    assert f"<td>{anchor(4)}</td>" in show(linked)._repr_html_()
    assert top_features_table(top, FeaturePages("organism", "relu-short"))["feature"].tolist() == [11, 4]
    assert top_features_table(top).equals(top_features_table(top, FeaturePages("organism", "relu-short")))
    inv = invariant_table(best, FeaturePages(*GPT2))
    assert inv.index.tolist() == [anchor(23)]
    assert f">{anchor(23)}</th>" in inv.style.to_html()
    assert invariant_table(best, FeaturePages("organism", "relu-short")).index.tolist() == [23]


def test_figures_name_the_page_in_hover_text_and_carry_its_url():
    """On gpt2 every trace that shows a feature id names its Neuronpedia page in the hover text and holds the URL in
    customdata; on the organism the figures are exactly as before (no customdata, 'feature i' hover text)."""
    import torch

    from possae.figures.length import example_profile_figure, positional_profiles_figure
    from possae.figures.positional import helix_overlay_figure, profile_grid_figure, r2_scatter_figure
    from possae.figures.semantic import invariant_profiles_figure, token_profiles_figure
    from possae.neuronpedia import FeaturePages
    from possae.positional import Helix

    gpt2, organism = FeaturePages(*GPT2), FeaturePages("organism", "relu-short")
    scores = pd.DataFrame({"r2_pos": [0.9, 0.1], "r2_tok": [0.05, 0.8], "peak_position": [3, 5],
                           "positional": [True, False]}, index=pd.Index([6, 8], name="feature"))
    fig = r2_scatter_figure(scores, 0.5, 0.1, 0.9, pages=gpt2)
    pos = next(t for t in fig.data if t.name.startswith("positional"))
    assert list(pos.customdata) == [URL.format(6)] and list(pos.text) == [
        "feature 6 (Neuronpedia gpt2-small/0-res-jb/6), peak 3"]
    plain = next(t for t in r2_scatter_figure(scores, 0.5, 0.1, 0.9, pages=organism).data if t.name.startswith("positional"))
    assert plain.customdata is None and list(plain.text) == ["feature 6, peak 3"]

    helix = Helix(torch.zeros(4, 3), torch.arange(1, 5), torch.ones(1, 3), torch.tensor([6]), torch.tensor([3]),
                  torch.tensor([0.5, 0.2, 0.1]))
    dirs = helix_overlay_figure(helix, pages=gpt2).data[-1]
    assert list(dirs.customdata) == [URL.format(6)] and dirs.text[0].startswith("feature 6 (Neuronpedia")
    assert helix_overlay_figure(helix).data[-1].customdata is None

    prof = pd.DataFrame({"feature": [6] * 3, "position": [0, 1, 2], "mean": [0.0, 1.0, 0.5], "std": [0.1] * 3})
    pre = pd.DataFrame({"feature": [6] * 3, "position": [0, 1, 2], "preact_pos": [0.0, 1.0, 0.2],
                        "fire_some": [-0.5] * 3})
    mean = next(t for t in profile_grid_figure(prof, pre, {6: 2}, pages=gpt2).data if t.name == "mean activation")
    assert set(mean.customdata) == {URL.format(6)} and "gpt2-small/0-res-jb/6" in mean.hovertemplate
    assert next(t for t in profile_grid_figure(prof, pre, {6: 2}).data if t.name == "mean activation").customdata is None

    line = positional_profiles_figure(prof, 2, pages=gpt2).data[0]
    assert set(line.customdata) == {URL.format(6)} and "Neuronpedia gpt2-small/0-res-jb/6" in line.hovertemplate
    assert positional_profiles_figure(prof, 2).data[0].hovertemplate is None
    ex = pd.DataFrame({"feature": [6, 6], "position": [0, 1], "activation": [0.0, 1.0], "label": ["x (spurious)"] * 2})
    assert set(example_profile_figure(ex, 1, pages=gpt2).data[0].customdata) == {URL.format(6)}
    assert example_profile_figure(ex, 1).data[0].customdata is None

    tok = pd.DataFrame({"label": ["' the'"] * 2, "rank": [1, 1], "feature": [11, 11], "position": [0, 1],
                        "activation": [1.0, 1.0]})
    t = token_profiles_figure(tok, 1, pages=gpt2).data[0]
    assert t.name == "#1 feature 11" and set(t.customdata) == {URL.format(11)}
    assert "#1 feature 11 (Neuronpedia gpt2-small/0-res-jb/11)" in t.hovertemplate
    t0 = token_profiles_figure(tok, 1).data[0]
    assert t0.customdata is None and "#1 feature 11<br>" in t0.hovertemplate
    inv = tok.assign(label="feature 11 on ' the'")
    assert set(invariant_profiles_figure(inv, 1, pages=gpt2).data[0].customdata) == {URL.format(11)}
    assert invariant_profiles_figure(inv, 1).data[0].customdata is None

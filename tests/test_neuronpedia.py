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

"""The figure lint: it flags each defect on a small figure built to have it, passes the same figure without it, and
passes every figure of the quick-profile book."""

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from plotly.subplots import make_subplots

from possae.figures import mark_context
from possae.figures.lint import BOOK_WIDTH, lint_figure, lint_pages, page_figures, text_width, values


def checks(fig) -> list[str]:
    """The names of the checks a figure fails, sorted, each once."""
    return sorted({line.split(":")[0] for line in lint_figure(fig)})


def line_figure(**layout) -> go.Figure:
    """Two named lines of distinct colours, both axes titled: a figure with no defect."""
    fig = go.Figure([go.Scatter(x=[0, 1, 2], y=[1, 2, 3], name="a", line_color="#1f77b4"),
                     go.Scatter(x=[0, 1, 2], y=[3, 2, 1], name="b", line_color="#d62728")])
    return fig.update_layout(xaxis_title="position", yaxis_title="activation", **layout)


def test_a_clean_figure_passes():
    assert lint_figure(line_figure(title="short")) == []


def test_missing_axis_title():
    fig = line_figure().update_layout(yaxis_title=None)
    assert checks(fig) == ["axis title"]
    assert "yaxis shows tick labels but has no title" in lint_figure(fig)[0]
    # an axis whose tick labels are hidden (an inner panel of shared axes) needs none
    shared = make_subplots(2, 1, shared_xaxes=True)
    for r in (1, 2):
        shared.add_scatter(x=[0, 1], y=[0, 1], showlegend=False, row=r, col=1)
        shared.update_yaxes(title_text="y", row=r, col=1)
    shared.update_xaxes(title_text="position", row=2, col=1)
    assert lint_figure(shared) == []
    # 3-D scenes: an axis plotly names x/y/z is untitled
    scene = go.Figure(go.Scatter3d(x=[0, 1], y=[0, 1], z=[0, 1]))
    assert [line.split(" is")[0] for line in lint_figure(scene)] == [
        "axis title: scene.xaxis", "axis title: scene.yaxis", "axis title: scene.zaxis"]
    scene.update_scenes(xaxis_title="PC1", yaxis_title="PC2", zaxis_title="PC3")
    assert lint_figure(scene) == []


def test_two_legend_entries_of_one_colour_in_one_panel():
    fig = line_figure().update_traces(line_color="#1f77b4")
    assert checks(fig) == ["same colour"]
    assert "'a', 'b' share #1f77b4" in lint_figure(fig)[0]
    # plotly's default colours repeat after ten traces
    many = go.Figure([go.Scatter(x=[0, 1], y=[i, i + 1], name=f"line {i}") for i in range(11)])
    many.update_layout(xaxis_title="x", yaxis_title="y")
    assert checks(many) == ["same colour"] and "'line 0', 'line 10'" in lint_figure(many)[0]
    # one colour in two panels is fine (one entry per panel), and so is one entry drawn in each panel
    grid = make_subplots(1, 2)
    for c in (1, 2):
        grid.add_scatter(x=[0, 1], y=[0, 1], name="a", legendgroup="a", showlegend=c == 1, line_color="red",
                         row=1, col=c)
        grid.add_scatter(x=[0, 1], y=[1, 0], name="b", legendgroup="b", showlegend=c == 1, line_color="blue",
                         row=1, col=c)
        grid.update_xaxes(title_text="x", row=1, col=c)
        grid.update_yaxes(title_text="y", row=1, col=c)
    assert lint_figure(grid) == []
    grid.data[3].line.color = "red"  # panel 2: a and b both red
    assert checks(grid) == ["same colour"] and "panel x2/y2" in lint_figure(grid)[0]


def test_a_subplot_title_wider_than_its_panel_and_a_title_wider_than_the_figure():
    titles = [f"ReLU SAE, layer {i}: mean / std / density" for i in range(8)]
    fig = make_subplots(1, 8, subplot_titles=titles)
    for c in range(1, 9):
        fig.add_scatter(x=[0, 1], y=[0, 1], showlegend=False, row=1, col=c)
    fig.update_xaxes(title_text="x").update_yaxes(title_text="y")
    assert checks(fig) == ["title width"] and len(lint_figure(fig)) == 8
    two = make_subplots(1, 2, subplot_titles=["layer 0", "layer 1"])
    two.add_scatter(x=[0, 1], y=[0, 1], showlegend=False, row=1, col=1)
    two.add_scatter(x=[0, 1], y=[0, 1], showlegend=False, row=1, col=2)
    two.update_xaxes(title_text="x").update_yaxes(title_text="y")
    assert lint_figure(two) == []
    assert checks(line_figure(title="A title that runs on and on " * 4)) == ["title width"]
    assert text_width("mm", 10) > text_width("ii", 10) > 0 and text_width("a<br>bbb", 10) == text_width("bbb", 10)


def context_grid(label_as_annotation: bool) -> go.Figure:
    """Four narrow panels of positions 0..255, each with the context (64) marked and labelled."""
    fig = make_subplots(1, 4)
    for c in range(1, 5):
        fig.add_scatter(x=np.arange(256), y=np.linspace(1, 2, 256), name="SAE", legendgroup="SAE",
                        showlegend=c == 1, line_color="#1f77b4", row=1, col=c)
        fig.add_scatter(x=np.arange(256), y=np.linspace(2, 3, 256), name="random", legendgroup="random",
                        showlegend=c == 1, line_color="#7f7f7f", row=1, col=c)
        if label_as_annotation:  # the book's labels until issue 25: "SAE context" left of the line, data coordinates
            fig.add_vline(x=63.5, annotation_text="SAE context", annotation_position="top left", row=1, col=c)
        else:
            mark_context(fig, 64, row=1, col=c)
    return fig.update_xaxes(title_text="position").update_yaxes(title_text="nMSE")


def test_an_annotation_that_moves_an_autorange():
    assert checks(context_grid(True)) == ["annotation range"]
    assert len(lint_figure(context_grid(True))) == 4
    assert lint_figure(context_grid(False)) == []  # mark_context labels its line, which never moves a range
    # a fixed range cannot move, and a label inside the data does not
    assert lint_figure(context_grid(True).update_xaxes(range=[0, 255])) == []
    wide = line_figure().update_layout(width=1200)
    wide.update_xaxes(range=None).add_annotation(x=1, y=2, text="inside", showarrow=False)
    assert lint_figure(wide) == []


def test_a_log_axis_labelling_minor_digits():
    fig = line_figure().update_traces(y=[0.2, 0.5, 0.9]).update_yaxes(type="log")
    assert checks(fig) == ["minor digits"]
    assert lint_figure(line_figure().update_traces(y=[1e-3, 1, 1e3]).update_yaxes(type="log")) == []
    assert lint_figure(fig.update_yaxes(tickvals=[0.2, 0.5, 1])) == []
    assert checks(fig.update_yaxes(tickvals=None, dtick="D2")) == ["minor digits"]
    assert lint_figure(fig.update_yaxes(dtick=1)) == []


def test_a_legend_entry_without_data_and_legend_names():
    fig = line_figure()
    fig.add_scatter(x=[], y=[], name="BOS slot", line_color="gray")
    assert checks(fig) == ["empty entry"] and "'BOS slot' has no data" in lint_figure(fig)[0]
    nan = line_figure()
    nan.add_scatter(x=[0, 1], y=[None, None], name="nothing", line_color="gray")
    assert checks(nan) == ["empty entry"]
    bars = go.Figure([go.Bar(x=[0, 1], y=[3, 4], name="R²_pos ≥ 0.5"), go.Bar(x=[0, 1], y=[0, 0], name="BOS slot")])
    bars.update_layout(xaxis_title="peak position", yaxis_title="features")
    assert checks(bars) == ["empty entry"] and "'BOS slot'" in lint_figure(bars)[0]
    twice = line_figure()  # "layer 0" of the ReLU SAEs and "layer 0" of the TopK SAEs
    twice.data[1].name = "a"
    assert checks(twice) == ["legend name"] and "2 legend entries are named 'a'" in lint_figure(twice)[0]
    twice.data[1].name = "TopK a"
    assert lint_figure(twice) == []
    unnamed = line_figure()
    unnamed.data[1].name = None
    assert checks(unnamed) == ["legend name"]


def test_colour_scaled_data_without_a_colour_bar():
    fig = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]], showscale=False))
    fig.update_layout(xaxis_title="x", yaxis_title="y")
    assert checks(fig) == ["colour bar"]
    assert lint_figure(fig.update_traces(showscale=True)) == []


def test_page_figures_reads_the_figures_of_a_page_typed_arrays_included():
    fig = line_figure(title="one")
    fig.add_scatter(x=np.arange(3), y=np.array([0.5, 1.5, 2.5]), name="c", line_color="green")
    div = pio.to_html(fig, include_plotlyjs=False, full_html=False)
    page = f"<html><body><p>text</p>{div}<p>more</p>{pio.to_html(go.Figure(), include_plotlyjs=False, full_html=False)}"
    figs = page_figures(page)
    assert len(figs) == 2 and figs[0]["layout"]["title"]["text"] == "one"
    assert values(figs[0]["data"][2]["y"]).tolist() == [0.5, 1.5, 2.5]
    assert lint_figure(figs[0]) == []


@pytest.mark.parametrize("width", [BOOK_WIDTH])
def test_every_figure_of_the_quick_book_passes_the_lint(quick_book, width):
    pages = sorted((quick_book / "chapters").glob("*.html"))
    n = sum(len(page_figures(p.read_text())) for p in pages)
    assert n >= 30, n
    report = lint_pages(pages, width)
    assert report == {}, "\n".join(f"{k}: {line}" for k, v in report.items() for line in v)


def test_log_ticks_are_powers_of_ten_or_whole_numbers():
    from possae.figures import log_ticks

    assert log_ticks([1, 1e5]) == dict(tickvals=[1, 10, 100, 1000, 1e4, 1e5],
                                       ticktext=["1", "10", "100", "1,000", "10⁴", "10⁵"])
    assert log_ticks([1e-3, 0.5])["ticktext"] == ["10⁻³", "0.01", "0.1", "1"]
    narrow = log_ticks([0.13, 0.3])  # less than a decade: 1-2-5 would leave one tick inside, so finer steps
    inside = [t for v, t in zip(narrow["tickvals"], narrow["ticktext"]) if 0.13 <= v <= 0.3]
    assert inside == ["0.15", "0.2", "0.3"]
    fig = line_figure().update_traces(y=[0.13, 0.2, 0.3]).update_yaxes(type="log", **narrow)
    assert lint_figure(fig) == []


BEFORE = {  # the figures issue 25 named, as the quick book drew them then, and what the lint finds in each
    "matching-4": ["axis title", "title width"],  # share matched per pair: seven panels in one row
    "setup-2": ["axis title", "colour bar"],  # 3-D axes named x/y/z; the colour bar never showed
    "positional-2": ["axis title", "same colour"],  # profiles: no axis titles; two red legend entries
    "positional-3": ["empty entry"],  # the 'BOS slot' entry with no bar
    "past_context-1": ["same colour"],  # the raw SAE and 'fine-tuned 400k' both blue
    "past_context-3": ["annotation range", "axis title", "minor digits"],  # x-axes stretched by 'SAE context'
    "oscillation-10": ["minor digits", "title width"],  # eight panels in one row (20 points each: within a decade)
    "oscillation-11": ["legend name", "minor digits"],  # 'layer 0'..'layer 3' twice
    "semantic-1": ["colour bar", "title width"],  # the log-count heatmap without a colour bar
    "length_generalization-4": ["annotation range", "axis title", "title width"],
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_the_lint_flags_the_figures_issue_25_named(name):
    import json

    from possae.data_paths import REPO_ROOT

    fig = json.loads((REPO_ROOT / "tests" / "data" / "figures_before_issue25" / f"{name}.json").read_text())
    assert checks(fig) == BEFORE[name]

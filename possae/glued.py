"""The values a chapter glued (myst_nb.glue) into its prose, read back from its executed notebook."""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from pathlib import Path

import nbformat


def glued_values(notebook: Path | str) -> dict[str, object]:
    """Return {glue name: value} for every value an executed notebook glued (plain-text values parsed as Python literals)."""
    nb = nbformat.read(notebook, as_version=4)
    values: dict[str, object] = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            scrap = out.get("metadata", {}).get("scrapbook")
            if not scrap:
                continue
            prefix = scrap.get("mime_prefix", "")
            text = out.get("data", {}).get(f"{prefix}text/plain")
            if text is None:
                continue
            try:
                values[scrap["name"]] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                values[scrap["name"]] = _numpy_scalar(text)
    return values


def _numpy_scalar(text: str) -> object:
    """Return the number inside a numpy scalar's repr (e.g. 'np.float64(0.5)'), else the text itself."""
    if text.startswith("np.") and text.endswith(")") and "(" in text:
        try:
            return ast.literal_eval(text[text.index("(") + 1 : -1])
        except (ValueError, SyntaxError):
            return text
    return text


def book_values(stage: Path | str) -> "pd.DataFrame":
    """Return every glued value of every executed chapter under a book's staging folder (chapter, name, value)."""
    return values_frame({nb.stem: glued_values(nb) for nb in sorted(Path(stage).rglob("*.ipynb"))})


def values_frame(values: Mapping[str, Mapping[str, object]]) -> "pd.DataFrame":
    """Return {chapter: {glue name: value}} (ledger.read_chapters) as one frame (chapter, name, value)."""
    import pandas as pd

    return pd.DataFrame([{"chapter": c, "name": n, "value": v} for c, vs in values.items() for n, v in vs.items()],
                        columns=["chapter", "name", "value"])


def compare_books(before: Path | str, after: Path | str) -> "pd.DataFrame":
    """Return the glued values of two builds side by side (chapter, name, before, after); a name absent from one is NaN."""
    b, a = book_values(before), book_values(after)
    return b.merge(a, on=["chapter", "name"], how="outer", suffixes=("_before", "_after")).rename(
        columns={"value_before": "before", "value_after": "after"})


PROSE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def check_prose_values(values: Mapping[str, object]) -> None:
    """Raise ValueError if a value meant for prose is None, NaN, infinite, or its name is not a plain identifier."""
    for name, v in values.items():
        if not PROSE_NAME.match(name):
            raise ValueError(f"glue name {name!r} must be lower-case letters, digits and underscores.")
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            raise ValueError(f"the prose value {name!r} is {v!r}: the result must give a number or a sentence, "
                             "and the chapter must not cite a missing value.")


MODEL_GLUE = "book_model"  # every chapter glues the name of the model its numbers come from under this name


def glue_all(values: Mapping[str, object], model=None) -> None:
    """Glue every value of a chapter's result under its name for the prose (not displayed), after check_prose_values;
    with `model`, also its cfg.model_name under MODEL_GLUE (the ledger names each row's model from it)."""
    from myst_nb import glue

    values = {**values, **({MODEL_GLUE: model.cfg.model_name} if model is not None else {})}
    check_prose_values(values)
    for name, v in values.items():
        glue(name, v.item() if hasattr(v, "item") else v, display=False)

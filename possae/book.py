"""Build the book: execute every chapter with papermill under a profile, then build Jupyter Book 1 HTML."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from possae.data_paths import REPO_ROOT

PROFILES: dict[str, dict] = {
    "organism": {},  # the offline default: every chapter's own defaults
    # organism with small samples, for tests
    "quick": {"n_heldout_tokens": 4096, "n_vocab_sample": 1024},
    # gpt2-small and its jb SAEs (needs a network): no width sweep or full-context control exists at layer 0
    "gpt2": {"model_name": "gpt2-small", "sae_release": "gpt2-small-res-jb", "sae_id": "blocks.0.hook_resid_pre",
             "width_sweep_ids": [], "control_sae_id": None,
             "relu_sae_ids": [f"blocks.{layer}.hook_resid_pre" for layer in range(12)], "topk_sae_ids": [],
             "all_layer_pairs": False, "hungarian_max_features": 16384},
}
STAGE = REPO_ROOT / "build" / "book"


class ChapterFailed(RuntimeError):
    """A chapter raised while executing; the message names the chapter and the cell."""


def toc_files(root: Path = REPO_ROOT) -> list[str]:
    """Return the files named in _toc.yml, in reading order (without extensions)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in [toc] + toc.get("parts", []):
        for ch in part.get("chapters", []):
            files.append(ch["file"])
    return files


def _source(root: Path, name: str) -> Path:
    for ext in (".py", ".md", ".ipynb"):
        if (root / f"{name}{ext}").is_file():
            return root / f"{name}{ext}"
    raise FileNotFoundError(f"_toc.yml names {name!r} but no {name}.py/.md exists")


def chapter_parameters(chapter: Path) -> set[str]:
    """Return the names assigned in a chapter's `parameters` cell."""
    import jupytext

    nb = jupytext.read(chapter)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        raise ValueError(f"{chapter} has no cell tagged 'parameters'")
    return {line.split("=")[0].strip().split(":")[0] for line in cell.source.splitlines()
            if "=" in line and not line.lstrip().startswith("#")}


def execute_chapter(chapter: Path, out: Path, parameters: dict, cwd: Path = REPO_ROOT) -> Path:
    """Execute one jupytext chapter with papermill into `out` (.ipynb); hide the injected parameters cell."""
    import jupytext
    import nbformat
    import papermill as pm

    nb = jupytext.read(chapter)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".src.ipynb")
    nbformat.write(nb, raw)
    known = chapter_parameters(chapter)
    try:
        pm.execute_notebook(raw, out, parameters={k: v for k, v in parameters.items() if k in known},
                            kernel_name="python3", cwd=str(cwd), progress_bar=False)
    except pm.PapermillExecutionError as e:
        raise ChapterFailed(f"Chapter {chapter.name} failed in cell {e.cell_index} "
                            f"(execution count {e.exec_count}): {e.ename}: {e.evalue}") from None
    finally:
        raw.unlink(missing_ok=True)
    done = nbformat.read(out, as_version=4)
    for cell in done.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(done, out)
    return out


def stage_site(stage: Path = STAGE, root: Path = REPO_ROOT) -> None:
    """Copy the book's configuration and a local plotly.js into the staging folder."""
    import plotly

    stage.mkdir(parents=True, exist_ok=True)
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy(root / f, stage / f)
    static = stage / "_static"
    static.mkdir(exist_ok=True)
    shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", static / "plotly.min.js")


def build(profile: str = "organism", only: str | None = None, root: Path = REPO_ROOT, stage: Path = STAGE,
          html: bool = True, extra: dict | None = None, out: Path | None = None) -> Path:
    """Execute the chapters (all, or `only`) under a profile and build the HTML into out/_build/html; return it."""
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    params = {**PROFILES[profile], **(extra or {})}
    stage_site(stage, root)
    for name in toc_files(root):
        src = _source(root, name)
        target = stage / name
        if src.suffix == ".py":
            if only in (None, src.stem):
                print(f"[possae build] executing {src.relative_to(root)} ({profile})", flush=True)
                execute_chapter(src, target.with_suffix(".ipynb"), params, cwd=root)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target.with_suffix(src.suffix))
    if not html:
        return stage
    out = out or root
    subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(stage), "--path-output", str(out)],
                   check=True)
    return out / "_build" / "html"

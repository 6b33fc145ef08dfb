"""What a user's mistakes get: local SAEs saved by sae_lens, corrupt or mismatched weights, missing folders, a device
this machine lacks, and interrupts. Errors that need no kernel come before it starts (no run folder is made)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
from safetensors.torch import load_file, save_file

from possae.book import link_chapters, run_chapter
from possae.data_paths import REPO_ROOT
from possae.devices import DeviceUnavailableError, available_devices, default_device
from possae.loaders import BadWeightsError, load_sae
from possae.params import ParameterError
from possae.preflight import PreflightError, check_chapter_inputs, check_hub_sae, named_saes
from possae.sae_files import ORGANISMS

SHIPPED = ORGANISMS["organism"] / "saes" / "relu-short"


@pytest.fixture(scope="module")
def saved_sae(tmp_path_factory):
    """The organism's relu-short, loaded and saved again with sae_lens's own SAE.save_model (a user's folder)."""
    from sae_lens import SAE

    folder = tmp_path_factory.mktemp("user") / "my-sae"
    SAE.load_from_disk(SHIPPED, device="cpu").save_model(folder)
    return folder


def _copy_with(folder: Path, dest: Path, tensors=None, cfg=None) -> Path:
    """Copy an SAE folder to `dest`, with some tensors or cfg.json fields changed."""
    dest.mkdir(parents=True)
    weights = load_file(folder / "sae_weights.safetensors")
    save_file({**weights, **(tensors or {})}, dest / "sae_weights.safetensors")
    config = json.loads((folder / "cfg.json").read_text())
    (dest / "cfg.json").write_text(json.dumps({**config, **(cfg or {})}))
    return dest


def _nan_weights(folder: Path) -> dict:
    w = load_file(folder / "sae_weights.safetensors")["W_enc"].clone()
    w[3, 5] = float("nan")
    return {"W_enc": w}


# ---------------------------------------------------------------- local SAEs


def test_a_folder_saved_by_sae_lens_loads_with_no_id_and_a_folder_of_saes_by_id(saved_sae, tmp_path):
    one = load_sae(str(saved_sae), None, device="cpu")
    shipped = load_sae("organism", "relu-short", device="cpu")
    assert torch.equal(one.W_enc, shipped.W_enc) and torch.equal(one.b_dec, shipped.b_dec)
    parent = _copy_with(saved_sae, tmp_path / "suite" / "mine").parent
    assert torch.equal(load_sae(str(parent), "mine", device="cpu").W_dec, shipped.W_dec)
    with pytest.raises(FileNotFoundError, match=r"holds one SAE \(its own cfg.json\), not an SAE folder 'relu-short'.*"
                                                r"sae_id None"):
        load_sae(str(saved_sae), "relu-short", device="cpu")
    with pytest.raises(FileNotFoundError, match=r"has no SAE folder 'other'.*SAE folders in .*suite: mine"):
        load_sae(str(parent), "other", device="cpu")
    with pytest.raises(FileNotFoundError, match=r"not a sae_lens SAE folder \(no cfg.json\).*name one of its SAE "
                                                r"folders with sae_id \(mine\)"):
        load_sae(str(parent), None, device="cpu")


def test_positional_chapter_runs_on_an_sae_saved_by_sae_lens_and_its_page_links_without_warnings(saved_sae, tmp_path,
                                                                                               capfd):
    """`possae run positional -p sae_release FOLDER`: the default sae_id is dropped for a one-SAE folder, the page
    renders with no Sphinx warning, and links to other chapters become plain text where no built book exists."""
    runs = tmp_path / "runs"
    page = run_chapter("positional", [("sae_release", str(saved_sae)), ("width_sweep_ids", "[]"),
                                      ("n_heldout_tokens", "1024")], profile="quick", runs=runs, book=tmp_path / "none")
    out = capfd.readouterr()
    assert page.is_file() and page.parents[2].name.startswith("positional-")
    assert "build succeeded." in out.out and "WARNING" not in out.out + out.err
    nb = nbformat.read(page.parents[2] / "positional.ipynb", as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "sae_id = None" in injected.source and str(saved_sae) in injected.source
    html = page.read_text()
    assert 'href="setup"' not in html and 'href="semantic"' not in html and "positional features" in html


def test_single_run_links_point_into_the_built_book_or_become_plain_text(tmp_path):
    book = tmp_path / "book"
    (book / "chapters").mkdir(parents=True)
    (book / "chapters" / "setup.html").write_text("<html></html>")
    page_dir = tmp_path / "runs" / "positional-x" / "_build" / "html"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "See the [setup\nchapter](setup), the [semantic](semantic#sec) one, [a site](https://x.org) and [self](positional).")])
    link_chapters(nb, "positional", page_dir, book)
    assert nb.cells[0].source == (f"See the [setup\nchapter]({os.path.relpath(book / 'chapters' / 'setup.html', page_dir)}),"
                                  " the semantic one, [a site](https://x.org) and [self](positional).")


def test_folders_given_relative_to_the_users_directory_reach_the_kernel_absolute(tmp_path):
    """The kernel runs in the repository: a folder typed relative to where the command ran is made absolute."""
    from possae.book import absolute_paths

    (tmp_path / "my-sae").mkdir()
    given = {"sae_release": "my-sae", "sae_id": "my-sae", "model_name": "organism", "gpt2_wpos_path": None,
             "width_sweep_release": "./nowhere"}
    assert absolute_paths(given, tmp_path) == {**given, "sae_release": str((tmp_path / "my-sae").resolve())}


def test_sae_id_none_is_a_valid_parameter():
    from possae.positional import PositionalParams

    assert PositionalParams.from_mapping({"sae_id": None}).sae_id is None


# ---------------------------------------------------------------- weights validated when loaded


def test_non_finite_weights_name_the_file_and_the_tensor(saved_sae, tmp_path):
    bad = _copy_with(saved_sae, tmp_path / "nan", tensors=_nan_weights(saved_sae))
    with pytest.raises(BadWeightsError, match=r"nan/sae_weights.safetensors: tensor 'W_enc' holds 1 non-finite value \("):
        load_sae(str(bad), None, device="cpu")
    inf = _copy_with(saved_sae, tmp_path / "inf", tensors={"b_enc": torch.full((4096,), float("inf"))})
    with pytest.raises(BadWeightsError, match=r"tensor 'b_enc' holds 4,096 non-finite values"):
        load_sae(str(inf), None, device="cpu")


def test_shapes_must_agree_with_cfg_json_and_the_error_names_the_field(saved_sae, tmp_path):
    wrong_in = _copy_with(saved_sae, tmp_path / "d_in", cfg={"d_in": 64})
    with pytest.raises(BadWeightsError, match=r"cfg.json says d_in = 64, but tensor 'W_enc' .* shape \(128, 4096\).*"
                                              r"Correct the field 'd_in'"):
        load_sae(str(wrong_in), None, device="cpu")
    wrong_sae = _copy_with(saved_sae, tmp_path / "d_sae", cfg={"d_sae": 1000})
    with pytest.raises(BadWeightsError, match=r"d_sae = 1000, but tensor 'W_enc'.*Correct the field 'd_sae'"):
        load_sae(str(wrong_sae), None, device="cpu")


def test_a_missing_folder_is_reported_as_missing(tmp_path):
    from possae.loaders import load_model

    with pytest.raises(FileNotFoundError, match=r"SAE folder .*nowhere does not exist"):
        load_sae(str(tmp_path / "nowhere"), None, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"Model folder .*nowhere does not exist"):
        load_model(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(ValueError, match="Unknown SAE release 'gpt2-smal-res-jb'"):  # a name, not a path: the registry
        check_hub_sae("gpt2-smal-res-jb", "blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match="Unknown sae_id 'blocks.99.hook_resid_pre'"):
        check_hub_sae("gpt2-small-res-jb", "blocks.99.hook_resid_pre")
    check_hub_sae("gpt2-small-res-jb", "blocks.0.hook_resid_pre")


# ---------------------------------------------------------------- devices


def test_an_unavailable_device_names_the_valid_choices(monkeypatch):
    from possae.positional import PositionalParams

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_devices()[0] == "cpu" and "cuda" not in available_devices()
    with pytest.raises(DeviceUnavailableError, match=r"device 'cuda' is unavailable on this machine: torch finds no "
                                                     r"usable CUDA GPU here. Valid choices here: cpu.*None"):
        default_device("cuda")
    with pytest.raises(DeviceUnavailableError, match=r"'gpu' is not a torch device name.*valid choices"):
        default_device("gpu")
    with pytest.raises(ParameterError, match=r"parameter 'device': device 'cuda:1' is unavailable"):
        PositionalParams(device="cuda:1")
    assert default_device("cpu") == torch.device("cpu") and default_device(None).type in ("cpu", "cuda")


# ---------------------------------------------------------------- errors before the kernel


def test_named_saes_reads_each_id_with_its_release():
    params = {"sae_release": "R", "sae_id": "a", "control_sae_id": None, "width_sweep_release": "W",
              "width_sweep_ids": ["b", "c"], "rotary_release": None, "rotary_sae_ids": ["d"],
              "dataset_ids": [["X", "e"], "f"], "layer_ids": {"relu": ["g"]}, "seed": 0}
    assert named_saes(params) == [("sae_id", "R", "a"), ("width_sweep_ids", "W", "b"), ("width_sweep_ids", "W", "c"),
                                  ("dataset_ids", "X", "e"), ("dataset_ids", "R", "f")]
    assert named_saes({"sae_release": "/x/y", "sae_id": None}) == [("sae_id", "/x/y", None)]


@pytest.mark.parametrize("case, pattern", [
    ("nan", r"the SAE in '.*nan' \(parameter sae_id\): .*tensor 'W_enc' holds 1 non-finite value "),
    ("d_in", r"cfg.json says d_in = 64, but tensor 'W_enc'"),
    ("missing", r"SAE folder .*missing does not exist"),
    ("model", r"d_in 128 \(cfg.json\) does not match d_model 96 of model"),
    ("layer", r"reads 'blocks.0.hook_resid_pre', but model .* has 0 layers"),
    ("hook", r"positional chapter studies layer-0 SAEs .* reads 'blocks.2.hook_resid_pre'"),
    ("control", r"SAE 'relu-full' of release '.*my-sae' \(parameter control_sae_id\): .*holds one SAE"),
    ("device", r"parameter device: device 'cuda:7' is unavailable"),
])
def test_errors_that_need_no_kernel_come_before_it_starts(saved_sae, tmp_path, case, pattern, monkeypatch):
    """Each mistake fails in run_chapter's checks: no run folder (and so no kernel) is ever made."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    sae, chapter, extra = saved_sae, "positional", []
    if case == "nan":
        sae = _copy_with(saved_sae, tmp_path / "nan", tensors=_nan_weights(saved_sae))
    elif case == "d_in":
        sae = _copy_with(saved_sae, tmp_path / "d_in", cfg={"d_in": 64})
    elif case == "missing":
        sae = tmp_path / "missing"
    elif case in ("model", "layer"):
        model = tmp_path / "model"
        model.mkdir()
        dims = {"model": {"d_model": 96, "n_layers": 4}, "layer": {"d_model": 128, "n_layers": 0}}[case]
        (model / "config.json").write_text(json.dumps(dims))
        extra = [("model_name", str(model))]
    elif case == "hook":
        meta = json.loads((saved_sae / "cfg.json").read_text())["metadata"]
        sae = _copy_with(saved_sae, tmp_path / "hook", cfg={"metadata": {**meta, "hook_name": "blocks.2.hook_resid_pre"}})
    elif case == "control":
        chapter = "length_generalization"
    elif case == "device":
        extra = [("device", "cuda:7")]
    runs = tmp_path / "runs"
    with pytest.raises(PreflightError, match=pattern):
        run_chapter(chapter, [("sae_release", str(sae)), *extra], profile="quick", runs=runs)
    assert not runs.exists()


def test_a_hub_sae_missing_from_the_cache_offline_fails_before_the_kernel(tmp_path, monkeypatch):
    """Offline with an empty hub cache, a hub SAE fails at once naming the organism; cached, it passes the check."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    pairs = [("sae_release", "gpt2-small-res-jb"), ("sae_id", "blocks.0.hook_resid_pre"), ("model_name", "gpt2-small")]
    with pytest.raises(PreflightError, match=r"hub is unreachable .*does not hold this SAE .*-p sae_release organism"):
        run_chapter("positional", pairs, runs=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    (tmp_path / "hub" / "models--jbloom--GPT2-Small-SAEs-Reformatted" / "snapshots" / "a" /
     "blocks.0.hook_resid_pre").mkdir(parents=True)
    check_hub_sae("gpt2-small-res-jb", "blocks.0.hook_resid_pre", need_cached=True)


def test_the_books_own_inputs_pass_the_checks():
    from possae.book import CHAPTER_PARAMS, PROFILES, chapter_defaults

    for chapter in CHAPTER_PARAMS:
        defaults = chapter_defaults(REPO_ROOT / "chapters" / f"{chapter}.py")
        for profile in ("organism", "quick"):
            check_chapter_inputs(chapter, {**defaults, **{k: v for k, v in PROFILES[profile].items() if k in defaults}})


# ---------------------------------------------------------------- interrupts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_prints_one_line_leaves_nothing_and_stops_its_kernel(tmp_path, sig):
    """Ctrl-C (SIGINT) or SIGTERM while the kernel runs: one line, exit status 128 + signal, the earlier output byte for
    byte, no temporary folder, and no kernel left running."""
    import psutil

    runs = tmp_path / "runs"
    earlier = runs / "setup" / "_build" / "html" / "setup.html"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("<html>an earlier good page</html>")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "possae.cli", "run", "setup", "--profile", "quick", "--runs",
                             str(runs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    kernels: list = []
    deadline = time.monotonic() + 120
    while not kernels and proc.poll() is None and time.monotonic() < deadline:
        kernels = [k for k in psutil.Process(proc.pid).children(recursive=True) if "ipykernel" in " ".join(k.cmdline())]
        time.sleep(0.2)
    assert kernels, "the run never started its kernel"
    time.sleep(2)  # the kernel is executing the chapter's cells
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert err.splitlines()[-1] == "possae run: interrupted; nothing was replaced"
    assert "Traceback" not in err and not [line for line in err.splitlines() if not line.startswith("[possae]")][:-1]
    assert earlier.read_text() == "<html>an earlier good page</html>"
    assert sorted(p.name for p in runs.iterdir()) == ["setup"]  # no hidden temporary folder, no failed notebook
    psutil.wait_procs(kernels, timeout=5)
    assert not [k for k in kernels if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert re.search(r"executing chapters/setup.py", err)

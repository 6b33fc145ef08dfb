"""Build the book: execute every chapter with papermill under a profile, then build Jupyter Book 1 HTML."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml

from possae.data_paths import REPO_ROOT
from possae.preflight import check_chapter_inputs, named_saes
from possae.progress import DISABLE_ENV

PROFILES: dict[str, dict] = {
    "organism": {},  # the offline default: every chapter's own defaults
    # for tests: every chapter on the first organism (n_ctx 256: the layer-0 chapters' exact statistics cover a quarter
    # of organism-gpt2pos's positions), with small samples
    "quick": {"model_name": "organism", "sae_release": "organism", "n_heldout_tokens": 1024, "n_vocab_sample": 256,
              "relu_sae_ids": ["relu-short", "relu-L1", "relu-L2", "relu-L3"], "rotary_release": "organism-rotary",
              "rotary_sae_ids": ["relu-L0", "relu-L1", "relu-L2", "relu-L3"]},
    # gpt2-small and its jb SAEs (needs a network, or the offline stand-in of `possae standin`): no width sweep or
    # full-context control exists at layer 0. Samples of text run through the model are smaller than the organism's, to
    # keep a CPU build short (benchmarks/bench_gpt2_profile.py times each chapter): one window of 1,024 tokens per corpus
    # (eight of the SAEs' 128), and 128 vocabulary tokens x 1,023 positions for the all-token curves.
    "gpt2": {"model_name": "gpt2-small", "sae_release": "gpt2-small-res-jb", "sae_id": "blocks.0.hook_resid_pre",
             "width_sweep_ids": [], "control_sae_id": None,
             "relu_sae_ids": [f"blocks.{layer}.hook_resid_pre" for layer in range(12)], "topk_sae_ids": [],
             "all_layer_pairs": False, "hungarian_max_features": 32768,
             "finetune_sae_ids": [], "rotary_release": None, "comparison_model": None,
             "n_heldout_tokens": 1024, "n_vocab_sample": 128},
}
STAGE = REPO_ROOT / "build" / "book"


def profile_saes(profile: str) -> list[tuple[str, str]]:
    """Return every (release, sae id) a profile names: `sae_id` and each `*_sae_id(s)`/`*_ids` with its release.

    An id list `X_ids` (or id `X_id`) reads its release from `X_release` when the profile sets one, else `sae_release`.
    """
    pairs: list[tuple[str, str]] = []
    for _, release, sae_id in named_saes(PROFILES[profile]):
        if (release, sae_id) not in pairs:
            pairs.append((release, sae_id))
    return pairs


FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           'fill="#2f5d8a"/><path d="M3 11 Q5 3 8 8 T13 5" stroke="#fff" stroke-width="1.6" fill="none"/></svg>\n')


CHAPTER_PARAMS = {  # each chapter's frozen parameters class (module:name), imported only when a chapter runs
    "setup": "possae.setup:SetupParams",
    "positional": "possae.positional:PositionalParams",
    "semantic": "possae.semantic:SemanticParams",
    "length_generalization": "possae.length:LengthParams",
    "oscillation": "possae.oscillation:OscillationParams",
    "matching": "possae.matching:MatchingParams",
    "past_context": "possae.past_context:PastContextParams",
    "ledger": "possae.ledger:LedgerParams",
}


def params_class(chapter: str):
    """Return the ChapterParams subclass of a chapter (by its file name without .py)."""
    import importlib

    if chapter not in CHAPTER_PARAMS:
        raise ValueError(f"Unknown chapter {chapter!r}; chapters: {', '.join(CHAPTER_PARAMS)}")
    module, name = CHAPTER_PARAMS[chapter].split(":")
    return getattr(importlib.import_module(module), name)


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


def chapter_defaults(chapter: Path) -> dict:
    """Return {name: value} of a chapter's `parameters` cell, each value a Python literal."""
    import ast

    import jupytext

    nb = jupytext.read(chapter)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        raise ValueError(f"{chapter} has no cell tagged 'parameters'")
    values = {}
    for node in ast.parse(cell.source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            values[t.id] = ast.literal_eval(node.value)
    return values


def chapter_parameters(chapter: Path) -> set[str]:
    """Return the names assigned in a chapter's `parameters` cell."""
    return set(chapter_defaults(chapter))


def parse_parameters(chapter: Path, pairs: list[tuple[str, str]]) -> dict:
    """Return {name: value} from (name, text) pairs, values read as YAML; raise naming the valid parameters."""
    known = chapter_parameters(chapter)
    unknown = sorted({name for name, _ in pairs} - known)
    if unknown:
        raise ValueError(f"Chapter {chapter.stem} has no parameter {', '.join(map(repr, unknown))}; "
                         f"its parameters: {', '.join(sorted(known))}")
    return {name: None if text in ("None", "none", "null", "~") else yaml.safe_load(text) for name, text in pairs}


# torch's switch for backing CPU tensors of 2 MB and more with huge pages (c10's alloc_cpu): each new large tensor then
# costs a few page faults instead of one per 4 kB page. The matching chapter's kernel spent 12.7 of its 54 s in the
# operating system without it and 5.1 of 48 s with it (one thread, this project's 2-core machine).
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def kernel_variables() -> dict[str, str]:
    """Return the variables a chapter's kernel runs under: $TQDM_DISABLE, so that no bar lands in the notebook, and
    torch's huge-page switch unless the caller set it."""
    return {DISABLE_ENV: "1", HUGE_PAGES_ENV: os.environ.get(HUGE_PAGES_ENV, "1")}


@contextmanager
def _kernel_environment():
    """Set kernel_variables() while a chapter's kernel starts (it inherits them)."""
    wanted = kernel_variables()
    old = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# the kernel's own log stays off the terminal: its start-up notice, and the tracebacks of its closing sockets when a
# run is interrupted (a cell's errors still reach the notebook and papermill)
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]


@contextmanager
def _kernel_sockets():
    """Yield the kernel manager's config that connects a chapter's kernel over Unix sockets in a folder of its own.

    Over TCP, jupyter_client picks each port by binding port 0 and closing it before the kernel binds it again; two
    chapters started at once in two processes can be handed the same port, and one kernel dies before it replies
    ("Address already in use"). Socket files in a fresh folder cannot collide.
    """
    from traitlets.config import Config

    with tempfile.TemporaryDirectory(prefix="possae-kernel-") as folder:  # short: a socket path holds <= 107 bytes
        yield Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(folder, "kernel")}})


def execute_chapter(chapter: Path, out: Path, parameters: dict, cwd: Path = REPO_ROOT) -> Path:
    """Execute one jupytext chapter with papermill into `out` (.ipynb); hide the injected parameters cell.

    `out` is replaced only when the chapter succeeds; a failed run is kept beside it as `<name>.failed.ipynb`.
    """
    import jupytext
    import nbformat
    import papermill as pm

    from possae.standin import BANNER, standin_active

    nb = jupytext.read(chapter)
    if standin_active():  # every page built from the stand-in cache says so, under its title
        banner = nbformat.v4.new_markdown_cell(f"```{{warning}}\n{BANNER}\n```")
        nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0, banner)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_name(f".{out.stem}.src.ipynb")
    tmp = out.with_name(f".{out.stem}.running.ipynb")
    known = chapter_parameters(chapter)
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ValueError(f"Chapter {chapter.stem} has no parameter {', '.join(map(repr, unknown))}; "
                         f"its parameters: {', '.join(sorted(known))}")
    if chapter.stem in CHAPTER_PARAMS:  # ill-typed values fail here, before a kernel starts
        params_class(chapter.stem).from_mapping(parameters)
    nbformat.write(nb, raw)
    failed = out.with_name(f"{out.stem}.failed.ipynb")
    try:
        with _kernel_environment(), _kernel_sockets() as config:
            pm.execute_notebook(raw, tmp, parameters=parameters, kernel_name="python3", cwd=str(cwd), config=config,
                                progress_bar=sys.stderr.isatty(), extra_arguments=KERNEL_ARGUMENTS,
                                request_save_on_cell_execute=False)  # written once at the end, not after every cell
    except pm.PapermillExecutionError as e:
        os.replace(tmp, failed)
        raise ChapterFailed(f"Chapter {chapter.name} failed in cell {e.cell_index} "
                            f"(execution count {e.exec_count}): {e.ename}: {e.evalue} (notebook: {failed})") from None
    except BaseException as e:
        if not isinstance(e, Exception):  # Ctrl-C or SIGTERM: papermill leaves the kernel running
            stop_child_processes()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        raw.unlink(missing_ok=True)
    done = nbformat.read(tmp, as_version=4)
    for cell in done.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(done, tmp)
    os.replace(tmp, out)
    failed.unlink(missing_ok=True)
    return out


# loggers of the executor an interrupt abandons: once its kernel is killed, nbclient's pending cell logs "Kernel died"
# and asyncio reports that task's exception at exit, after the interrupt's own line
ABANDONED_LOGGERS = ("nbclient", "papermill", "traitlets", "asyncio")


def silence_abandoned_executor() -> None:
    """Silence the loggers of a chapter's executor once an interrupt abandons it: what they would report (its kernel
    shut down or killed under a pending cell) is the interrupt itself, already reported in one line."""
    import logging

    for name in ABANDONED_LOGGERS:
        logging.getLogger(name).disabled = True


def stop_child_processes(timeout: float = 3.0) -> None:
    """Kill every process this one started (the kernel of an interrupted chapter, jupyter-book): their work is thrown
    away, and a kernel asked to stop politely prints tracebacks from its closing sockets onto the terminal."""
    import psutil

    silence_abandoned_executor()

    children = psutil.Process().children(recursive=True)
    for child in children:
        with suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=timeout)


def with_banner(markdown: str) -> str:
    """Return a markdown page with the stand-in banner under its first heading when the stand-in cache is in use."""
    from possae.standin import BANNER, standin_active

    if not standin_active():
        return markdown
    lines = markdown.splitlines(keepends=True)
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), 0)
    return "".join(lines[:at]) + f"\n```{{warning}}\n{BANNER}\n```\n\n" + "".join(lines[at:])


def stage_site(stage: Path = STAGE, root: Path = REPO_ROOT) -> None:
    """Copy the book's configuration, a local plotly.js and the favicon into the staging folder."""
    import plotly

    stage.mkdir(parents=True, exist_ok=True)
    for f in ("_config.yml", "_toc.yml"):  # unchanged files keep their times: Sphinx re-reads only what changed
        write_if_changed(stage / f, (root / f).read_text())
    static = stage / "_static"
    static.mkdir(exist_ok=True)
    write_if_changed(static / "plotly.min.js", (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text())
    write_if_changed(static / "favicon.svg", FAVICON)


def favicon_ico(rgb: tuple[int, int, int] = (37, 99, 235), size: int = 16) -> bytes:
    """Return a one-colour square icon as .ico bytes (one embedded PNG)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", size, size, 0, 0, 1, 32, len(png), 22) + png


def _jupyter_book(stage: Path, out: Path) -> Path:
    """Build the Jupyter Book staged in `stage` into out/_build/html; return that folder."""
    subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(stage), "--path-output", str(out)],
                   check=True)
    html = out / "_build" / "html"
    # pages without a <link rel="icon">, such as the root index.html that only redirects, make the browser ask for
    # /favicon.ico
    (html / "favicon.ico").write_bytes(favicon_ico())
    return html


# ---------------------------------------------------------------- running chapters, two at a time, once


@dataclass(frozen=True)
class ChapterJob:
    """One chapter to execute: its toc name, jupytext source, notebook to write and the parameters given to it."""

    name: str
    src: Path
    out: Path
    given: dict

    @property
    def reads_others(self) -> bool:
        """Return whether the chapter reads the other chapters' notebooks (the ledger): it runs after them."""
        return "chapters_dir" in self.given


FINGERPRINTED = ("possae", "pyproject.toml", "constraints.txt")  # what a chapter's output depends on, besides itself
FINGERPRINT_ENV = ("HF_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES")  # where models come from
RUN_RECORD = ".run.json"  # beside each staged notebook: its fingerprint and what its run cost
BUILD_RECORD = "build.json"  # in the staging folder: the last build's chapter runs and the time of each step


def default_jobs() -> int:
    """Return how many chapters run at once: $POSSAE_JOBS, else 2 (each kernel gets its share of the cores)."""
    value = os.environ.get("POSSAE_JOBS", "2")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"$POSSAE_JOBS must be a positive whole number of chapters run at once; got {value!r}.")
    return int(value)


def tree_fingerprint(root: Path = REPO_ROOT, parts: tuple[str, ...] = FINGERPRINTED) -> str:
    """Return a sha256 over the package's code and artifacts (paths and bytes; caches left out) and the environment
    variables that pick where models come from."""
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        p = root / part
        files = (sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts) if p.is_dir()
                 else [p] if p.is_file() else [])
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(json.dumps({k: os.environ.get(k) for k in FINGERPRINT_ENV}, sort_keys=True).encode())
    return h.hexdigest()


def chapter_fingerprint(job: ChapterJob, tree: str, profile: str, others: tuple[str, ...] = ()) -> str:
    """Return a chapter run's fingerprint: the tree's, the chapter's source, its parameters and the stand-in state
    (and, for the ledger, the fingerprints of the notebooks it reads)."""
    import hashlib

    from possae.standin import standin_active

    key = {"tree": tree, "profile": profile, "source": job.src.read_text(), "given": job.given,
           "standin": standin_active(), "others": list(others)}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def run_record(notebook: Path) -> dict:
    """Return the record of the run that wrote a staged notebook ({} when there is none, or it is unreadable)."""
    try:
        return json.loads(notebook.with_suffix(RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def expected_wall(job: ChapterJob, profile: str) -> float:
    """Return how long a chapter is expected to take: its last run's wall time here, else (on a fresh clone, organism
    profile) its time in the recorded book benchmark, else 0."""
    from possae.benchmark_results import recorded_chapter_walls

    last = run_record(job.out).get("wall_s")
    if last is not None:
        return float(last)
    return recorded_chapter_walls().get(Path(job.name).name, 0.0) if profile == "organism" else 0.0


# chapters that compute, early in their run, results the build's cache (possae.cache) hands to chapters run later: setup
# the default SAE's held-out variance (length_generalization reads it), semantic its exact layer-0 statistics
# (positional, length_generalization and past_context read them). They start first, side by side, so each of those
# results is computed by the short chapter that needs it first, and no long chapter computes it or waits for it.
CACHE_PRODUCERS = ("setup", "semantic")


def run_order(todo: list[ChapterJob], profile: str) -> list[ChapterJob]:
    """Return the order chapters start in: the cache's producers, then the longest first (expected_wall), then those
    that read the others' notebooks."""
    def key(job: ChapterJob) -> tuple[int, float]:
        stem = Path(job.name).name
        rank = CACHE_PRODUCERS.index(stem) if stem in CACHE_PRODUCERS else len(CACHE_PRODUCERS)
        return rank, -expected_wall(job, profile)

    return sorted((j for j in todo if not j.reads_others), key=key) + [j for j in todo if j.reads_others]


def job_environment(out: Path, threads: int) -> dict[str, str]:
    """Return the variables a chapter's worker sets for its kernel: its CPU threads (torch sizes its pool from them)
    and the build's cache of results that several chapters need (possae.cache), in the staging folder of `out`."""
    from possae.cache import CACHE_ENV

    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            CACHE_ENV: os.environ.get(CACHE_ENV) or str(out.parent.parent / "cache")}


def _execute_job(src: Path, out: Path, given: dict, cwd: Path, threads: int, served: dict[str, str]) -> dict:
    """Execute one chapter in this (fresh) worker process with `threads` CPU threads for its kernel, forked from the
    kernel server when `served` names one (possae.kernel_server); return its wall time, and its kernel's CPU time and
    peak resident memory."""
    import resource

    from possae.kernel_server import USAGE_ENV

    os.environ.update(job_environment(out, threads))
    os.environ.update(served)
    usage_file = out.with_name(f".{out.stem}.usage.json")
    usage_file.unlink(missing_ok=True)
    if served:
        os.environ[USAGE_ENV] = str(usage_file)
    t0 = time.perf_counter()
    try:
        execute_chapter(src, out, given, cwd=cwd)
        wall = time.perf_counter() - t0
        if served and usage_file.is_file():  # the served kernel is the server's child: its launcher reports its usage
            return {"wall_s": wall, **json.loads(usage_file.read_text()), "threads": threads, "forked": True}
    finally:
        usage_file.unlink(missing_ok=True)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, waited for by papermill's kernel manager
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "threads": threads}


def _worker_modules(todo: list[ChapterJob]) -> list[str]:
    """Return what a chapter's worker imports before its kernel starts: papermill and its readers, the stand-in check,
    and each chapter's parameters class, which checks the parameters' types (the layer-0 chapters' modules import
    sae_lens: 7-9 s in each worker, on the cores the running kernels use)."""
    stems = {Path(job.name).name for job in todo}
    return ["papermill", "jupytext", "nbformat", "possae.standin",
            *sorted({CHAPTER_PARAMS[s].split(":")[0] for s in stems if s in CHAPTER_PARAMS})]


def _import_all(modules: list[str]) -> None:
    """Import `modules` into this process, so that the workers forked from it start with them."""
    import importlib

    for name in modules:
        importlib.import_module(name)


SERVE_FROM = 2  # the fewest chapters to run for which the build forks kernels from a kernel server (it costs one import)


def execute_chapters(todo: list[ChapterJob], profile: str, root: Path = REPO_ROOT, jobs: int | None = None,
                     rerun: bool = False, serve: bool = True) -> dict[str, dict]:
    """Execute the chapters `jobs` at a time, each in a fresh process, in run_order (the cache's producers, then the
    longest first, then those that read the others); skip those whose notebook carries the same fingerprint; return
    each one's run record.

    serve: where at least SERVE_FROM chapters run, fork their kernels from one process that imported the libraries
    once (possae.kernel_server) instead of starting each from scratch.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import ExitStack

    from possae.kernel_server import kernel_server

    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs is the number of chapters run at once and must be at least 1; got {jobs}.")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    tree = tree_fingerprint(root) if todo else ""
    records: dict[str, dict] = {}
    order = run_order(todo, profile)
    first, last = [j for j in order if not j.reads_others], [j for j in order if j.reads_others]

    def fingerprint(job: ChapterJob) -> str:
        others = tuple(json.loads(r.read_text()).get("fingerprint", "")  # the notebooks it reads: all the others
                       for r in sorted(job.out.parent.glob(f"*{RUN_RECORD}"))
                       if r.name != job.out.with_suffix(RUN_RECORD).name) if job.reads_others else ()
        return chapter_fingerprint(job, tree, profile, others)

    def up_to_date(job: ChapterJob, fp: str) -> bool:
        return not rerun and run_record(job.out).get("fingerprint") == fp and job.out.is_file()

    # the server pays off over chapters that import the libraries (the ledger-like readers import little)
    to_run = sum(not up_to_date(j, fingerprint(j)) for j in first)
    # forking a process that loaded torch is safe on Linux; elsewhere (macOS's frameworks) kernels start plainly
    served: dict[str, str] | None = None if serve and to_run >= SERVE_FROM and sys.platform == "linux" else {}
    failures: list[BaseException] = []
    running: dict = {}
    prepared = False
    with ExitStack() as stack:
        try:
            for batch in (first, last):
                for job in batch:
                    fp = fingerprint(job)
                    if up_to_date(job, fp):
                        old = run_record(job.out)
                        _log(f"{job.src.relative_to(root)} is up to date (run in {old.get('wall_s', 0):.0f} s); "
                             "not run again")
                        records[job.name] = {**old, "skipped": True}
                        continue
                    while len(running) >= jobs:
                        _collect(running, records, failures, root)
                    if failures:
                        break
                    if not prepared:  # the first chapter to run: what every worker imports, imported once here
                        prepared = True
                        preload = partial(_import_all, _worker_modules(todo))
                        if served is None:  # the kernels' environment, as each worker sets it for its own
                            env = {**os.environ, **kernel_variables(), **job_environment(job.out, threads)}
                            served = stack.enter_context(kernel_server(env, while_starting=preload))
                            if not served:
                                _log("the kernel server did not start; chapters start their own kernels")
                        else:
                            preload()
                    _log(f"executing {job.src.relative_to(root)} ({profile} profile)")
                    # a fresh forked process per chapter: its kernel's CPU time and peak memory are its own
                    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
                    future = pool.submit(_execute_job, job.src, job.out, job.given, root, threads, served)
                    running[future] = (job, fp, pool)
                while running:
                    _collect(running, records, failures, root)
                if failures:
                    raise failures[0]
        except BaseException as e:
            if not isinstance(e, Exception):  # Ctrl-C or SIGTERM: the workers and their kernels are stopped
                stop_child_processes()
            for _, _, pool in running.values():
                pool.shutdown(wait=False, cancel_futures=True)
            raise
    return records


def _collect(running: dict, records: dict, failures: list, root: Path) -> None:
    """Wait for a running chapter to end; record its run (beside its notebook) or its failure, and drop it from
    `running`."""
    from concurrent.futures import FIRST_COMPLETED, wait

    done, _ = wait(running, return_when=FIRST_COMPLETED)
    for fut in done:
        job, fp, pool = running.pop(fut)
        pool.shutdown()
        try:
            record = {"chapter": job.name, "fingerprint": fp, **fut.result()}
        except Exception as e:  # a failed chapter: the others running go on; none starts after it
            failures.append(e)
            continue
        job.out.with_suffix(RUN_RECORD).write_text(json.dumps(record, indent=1))
        records[job.name] = record
        _log(f"{job.src.relative_to(root)} done in {record['wall_s']:.0f} s")


def write_if_changed(path: Path, text: str) -> None:
    """Write text to path unless it already holds it (an unchanged file keeps its time, so Sphinx does not re-read it)."""
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)


def _log(message: str) -> None:
    """Print one progress line of the build to the terminal."""
    print(f"[possae] {message}", file=sys.stderr, flush=True)


def build(profile: str = "organism", only: str | None = None, root: Path = REPO_ROOT, stage: Path = STAGE,
          html: bool = True, extra: dict | None = None, out: Path | None = None, jobs: int | None = None,
          rerun: bool = False, serve: bool = True) -> Path:
    """Execute the chapters (all, or `only`) under a profile and build the HTML into out/_build/html; return it.

    Chapters run `jobs` at a time (default: default_jobs()), the ledger after the others. A chapter whose notebook in
    `stage` came from the same source, parameters, package and artifacts (its fingerprint) is not run again, unless
    `rerun`. serve: fork the chapters' kernels from a kernel server (execute_chapters).
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    chapters = {name: _source(root, name) for name in toc_files(root)}
    declared = {name: chapter_parameters(src) for name, src in chapters.items() if src.suffix == ".py"}
    if only is not None and only not in {Path(n).name for n in declared}:
        raise ValueError(f"Unknown chapter {only!r}; chapters: {', '.join(Path(n).name for n in declared)}")
    run = {name for name in declared if only in (None, Path(name).name)}
    # a profile's names must belong to some chapter; names given for this build to a chapter that runs
    for given, among, what in ((PROFILES[profile], declared, f"profile {profile!r}"), (extra or {}, run, "this build")):
        unknown = sorted(set(given) - set().union(*(declared[n] for n in among)))
        if unknown:
            raise ValueError(f"{what} sets {', '.join(map(repr, unknown))}, which no chapter it runs declares; "
                             f"their parameters: {', '.join(sorted(set().union(*(declared[n] for n in among))))}")
    params = {**PROFILES[profile], **(extra or {})}
    for name in sorted(run):  # a missing or broken SAE, or a device this machine lacks, fails before any kernel starts
        check_chapter_inputs(Path(name).name, {**chapter_defaults(chapters[name]),
                                               **{k: v for k, v in params.items() if k in declared[name]}})
    stage_site(stage, root)
    todo = []
    for name, src in chapters.items():
        target = stage / name
        if src.suffix == ".py":
            if name in run:
                given = {k: v for k, v in params.items() if k in declared[name]}
                if "chapters_dir" in declared[name]:  # a chapter that reads the others' notebooks reads this build's
                    given = {"chapters_dir": str(target.parent.resolve()), **given}
                todo.append(ChapterJob(name, src, target.with_suffix(".ipynb"), given))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_if_changed(target.with_suffix(src.suffix), with_banner(src.read_text()))
    t0 = time.perf_counter()
    records = execute_chapters(todo, profile, root, jobs=jobs, rerun=rerun, serve=serve)
    summary = {"profile": profile, "jobs": jobs or default_jobs(), "chapters_wall_s": time.perf_counter() - t0,
               "chapters": records}
    result = stage
    if html:
        _log("building the HTML with jupyter-book")
        t0 = time.perf_counter()
        result = _jupyter_book(stage, out or root)
        summary["html_s"] = time.perf_counter() - t0
    (stage / BUILD_RECORD).write_text(json.dumps(summary, indent=1))
    return result


RUNS = REPO_ROOT / "build" / "runs"


def chapter_names(root: Path = REPO_ROOT) -> list[str]:
    """Return the names of the executable chapters (the .py files of the toc), in reading order."""
    return [Path(n).name for n in toc_files(root) if _source(root, n).suffix == ".py"]


def run_folder_name(chapter: str, parameters: dict) -> str:
    """Return the folder name of one run: the chapter and its parameters, e.g. 'positional-sae_id-relu-full'."""
    parts = [chapter] + [f"{k}-{v}" for k, v in sorted(parameters.items())]
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "-".join(parts))[:150]


def absolute_paths(params: dict, cwd: Path | None = None) -> dict:
    """Return params with each model, release, path or folder value that names an existing file or folder (relative
    to `cwd`) made absolute: the kernel runs in the repository, not where the command was typed."""
    from possae.sae_files import ORGANISMS

    base = Path.cwd() if cwd is None else cwd
    out = {}
    for key, value in params.items():
        if (key == "model_name" or key.endswith(("_release", "_path", "_dir"))) and isinstance(value, str) \
                and value not in ORGANISMS and (base / Path(value).expanduser()).exists():
            value = str((base / Path(value).expanduser()).resolve())
        out[key] = value
    return out


def link_chapters(nb, chapter: str, page_dir: Path, book: Path, root: Path = REPO_ROOT) -> None:
    """Rewrite a single run's links to other pages of the book (`[text](setup)`) in place: to the built book's page
    (relative to `page_dir`) where `book` holds one, else to plain text. Nothing is left for Sphinx to resolve."""
    pages = {Path(name).name: name for name in toc_files(root) if Path(name).name != chapter}
    pattern = re.compile(r"\[([^\]]*)\]\((" + "|".join(map(re.escape, pages)) + r")(#[^)\s]*)?\)")

    def target(m: re.Match) -> str:
        built = book / f"{pages[m.group(2)]}.html"
        if not built.is_file():
            return m.group(1)
        return f"[{m.group(1)}]({os.path.relpath(built, page_dir)}{m.group(3) or ''})"

    for cell in nb.cells:
        if cell.cell_type == "markdown" and pages:
            cell.source = pattern.sub(target, cell.source)


def run_chapter(chapter: str, pairs: list[tuple[str, str]], profile: str = "organism", root: Path = REPO_ROOT,
                runs: Path = RUNS, book: Path | None = None) -> Path:
    """Execute one chapter with `-p` parameters into runs/<chapter>-<params>/ and render it; return its HTML page.

    Its model, SAEs and device are checked before the kernel starts. The run goes to a temporary folder that replaces
    the run's folder only once the page is rendered: a failure or an interrupt leaves an earlier output as it was (the
    failed notebook is kept as runs/<folder>.failed.ipynb). Links to other chapters point into `book` (default: the
    last `possae build`, root/_build/html) where it holds the page.
    """
    import nbformat

    if chapter not in chapter_names(root):
        raise ValueError(f"Unknown chapter {chapter!r}; chapters: {', '.join(chapter_names(root))}")
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    src = _source(root, f"chapters/{chapter}")
    params = absolute_paths(parse_parameters(src, pairs))
    defaults = chapter_defaults(src)
    release = params.get("sae_release")
    if "sae_id" in defaults and "sae_id" not in params and isinstance(release, str) \
            and (Path(release) / "cfg.json").is_file():
        params["sae_id"] = None  # the folder holds one SAE (sae_lens's save_model layout): no id inside it
    profile_params = {k: v for k, v in PROFILES[profile].items() if k in defaults}
    check_chapter_inputs(chapter, {**defaults, **profile_params, **params})
    final = runs / run_folder_name(chapter, params)
    runs.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=runs))
    try:
        _log(f"executing {src.relative_to(root)} into {final}")
        try:
            execute_chapter(src, tmp / f"{chapter}.ipynb", {**profile_params, **params}, cwd=root)
        except ChapterFailed as e:
            kept = runs / f"{final.name}.failed.ipynb"
            os.replace(tmp / f"{chapter}.failed.ipynb", kept)
            raise ChapterFailed(str(e).replace(str(tmp / f"{chapter}.failed.ipynb"), str(kept))) from None
        nb = nbformat.read(tmp / f"{chapter}.ipynb", as_version=4)
        link_chapters(nb, chapter, final / "_build" / "html", root / "_build" / "html" if book is None else book, root)
        nbformat.write(nb, tmp / f"{chapter}.ipynb")
        stage_site(tmp, root)
        (tmp / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": chapter}))
        config = yaml.safe_load((tmp / "_config.yml").read_text())
        config.setdefault("sphinx", {}).setdefault("config", {})["myst_all_links_external"] = True  # links: as written
        (tmp / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        _log("rendering the page with jupyter-book")
        _jupyter_book(tmp, tmp)
        old = runs / f".{final.name}.old"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        (runs / f"{final.name}.failed.ipynb").unlink(missing_ok=True)
    except BaseException as e:
        if not isinstance(e, Exception):  # Ctrl-C or SIGTERM while jupyter-book renders
            stop_child_processes()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "_build" / "html" / f"{chapter}.html"

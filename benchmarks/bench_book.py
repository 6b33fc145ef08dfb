"""Time a newcomer's first run: `make book` and `make test` from a fresh clone, each twice, into a JSON record.

The benchmark clones this repository (its committed HEAD) into a temporary folder with nothing beside it (no
../shared), then runs, timing each from the outside:

1. `make install` (the virtual environment; pip's cache is whatever this machine holds);
2. `make book` (every chapter on the organism profile, then the HTML); the build's own record,
   build/book/build.json, gives each chapter's wall time, its kernel's CPU time and peak memory, and the HTML step;
3. `make book` again: the second run must redo nothing;
4. `make test` with pytest's JUnit report, summed per test file; then `make test` again.

It writes benchmarks/results/book_organism_cpu.json (or --out) and rewrites the README's time table from it
(possae.benchmark_results.book_time_table; a test checks that they agree). Nothing here asserts a timing.

    python3 benchmarks/bench_book.py                 # everything (about 20 minutes on 2 cores)
    python3 benchmarks/bench_book.py --skip-tests    # the book only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "book_organism_cpu.json"
README_TEST = "tests/test_book.py::test_the_readme_time_table_is_the_recorded_book_benchmark"


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"the JSON record to write (default: {OUT.relative_to(REPO)})")
    ap.add_argument("--skip-tests", action="store_true", help="time the book only")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    return ap.parse_args()


def timed(cmd: list[str], cwd: Path, log: Path, env: dict | None = None, check: bool = True) -> float:
    """Run a command in cwd (output to log); return its wall seconds; raise if it fails and `check`."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, check=check, env={**os.environ, **(env or {})})
    return time.perf_counter() - t0


def per_file(junit: Path) -> dict[str, dict]:
    """Return per test file: the number of tests and the seconds they took (pytest's JUnit report, summed)."""
    files: dict[str, dict] = defaultdict(lambda: {"tests": 0, "seconds": 0.0})
    for case in ET.parse(junit).getroot().iter("testcase"):
        parts = case.get("classname", "").split(".")  # tests.test_book, or tests.test_book.TestClass
        module = next((i for i, p in enumerate(parts) if p.startswith("test_")), len(parts) - 1)
        key = "/".join(parts[: module + 1]) + ".py"
        files[key]["tests"] += 1
        files[key]["seconds"] += float(case.get("time", 0.0))
    return dict(sorted(files.items(), key=lambda kv: -kv[1]["seconds"]))


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    args = _parse()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    base = Path(tempfile.mkdtemp(prefix="possae-bench-"))
    clone = base / "possae"  # nothing beside it: no ../shared
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    logs = base / "logs"
    logs.mkdir()
    env = {"POSSAE_DATA": str(base / "no-shared-data")}  # a fresh clone's reader has no data folder
    record: dict = {"commit": commit, "machine": {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
                                                  "python": platform.python_version()},
                    "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    print(f"[bench] clone {clone} at {commit[:10]}", flush=True)
    record["install_s"] = timed(["make", "install"], clone, logs / "install.log", env)
    print(f"[bench] install {record['install_s']:.0f} s", flush=True)
    book = timed(["make", "book"], clone, logs / "book1.log", env)
    build = json.loads((clone / "build" / "book" / "build.json").read_text())
    record["book"] = {
        "make_book_s": book, "make_book_with_install_s": book + record["install_s"],
        "chapters_wall_s": build["chapters_wall_s"], "html_s": build.get("html_s"), "jobs": build["jobs"],
        "chapters": {Path(k).name: {m: v[m] for m in ("wall_s", "cpu_s", "peak_rss_mb", "threads")}
                     for k, v in build["chapters"].items()},
    }
    record["book"]["chapters_sum_s"] = sum(c["wall_s"] for c in record["book"]["chapters"].values())
    print(f"[bench] make book {book:.0f} s", flush=True)
    again = timed(["make", "book"], clone, logs / "book2.log", env)
    rebuilt = json.loads((clone / "build" / "book" / "build.json").read_text())
    record["book_again"] = {"make_book_s": again, "chapters_run_again": sorted(
        Path(k).name for k, v in rebuilt["chapters"].items() if not v.get("skipped")), "html_s": rebuilt.get("html_s")}
    print(f"[bench] make book again {again:.0f} s", flush=True)
    if not args.skip_tests:
        for run in ("test", "test_again"):
            junit = logs / f"{run}.xml"
            # the README-table test can pass only once this record exists: left out here; failures are counted
            seconds = timed(["make", "test", f"PYTEST_ARGS=--junitxml={junit} --deselect {README_TEST}"], clone,
                            logs / f"{run}.log", env, check=False)
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            record[run] = {"make_test_s": seconds, "failures": int(suite.get("failures", 0)) + int(suite.get("errors", 0)),
                           "skipped": int(suite.get("skipped", 0)), "files": per_file(junit)}
            print(f"[bench] make {run.replace('_', ' ')} {seconds:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"[bench] wrote {args.out}", flush=True)
    if args.out == OUT:  # the README's time table quotes the recorded file (written by the clone's environment)
        subprocess.run([str(clone / ".venv" / "bin" / "python"), "-m", "possae.benchmark_results"], cwd=REPO,
                       check=True)
        print(f"[bench] updated the time table of {REPO / 'README.md'}", flush=True)
    if args.keep:
        print(f"[bench] kept {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

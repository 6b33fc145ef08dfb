"""Command line: `possae build` builds the book, `possae run` re-runs one chapter, `possae data pack` makes the
evaluation pack, `possae organism STEP` rebuilds the offline model organism."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

STEPS = ("tokenizer", "tokens", "model", "saes", "card")


def _organism(args: argparse.Namespace) -> None:
    from possae.organism.recipe import ARTIFACTS, OrganismRecipe, build_dir, twin_dirs, variant_saes

    if args.data:
        os.environ["POSSAE_DATA"] = args.data
    from possae.organism.recipe import cpu_hours, lm_recipe

    recipe = OrganismRecipe(lm=lm_recipe(args.recipe, args.positional))
    if args.tokens:
        recipe = dataclasses.replace(recipe, lm=dataclasses.replace(recipe.lm, train_tokens=args.tokens))
    out_dir, work_dir, model_name = twin_dirs(args.positional)
    twin = args.positional != "standard"
    if args.step in ("seed-curve", "oscillation-comparison") and args.positional != "standard":
        raise SystemExit(f"The {args.step} step works on the first organism: leave --positional out.")
    if args.step == "sweep" and args.positional != "gpt2":
        raise SystemExit("The fine-tuning sweep runs on the GPT-2-geometry organism: give --positional gpt2.")
    if twin:
        if args.step not in ("model", "saes", "card", "sweep") or (args.step == "card" and args.positional.endswith("rotary")):
            raise SystemExit(f"The {args.positional} organism shares the organism's tokenizer, tokens and card: "
                             "its steps are `model` and `saes`.")
        recipe = dataclasses.replace(recipe, saes=variant_saes(args.positional))
    steps = STEPS if args.step == "all" else (args.step,)
    for step in steps:
        if step == "tokenizer":
            from possae.organism import data

            print("tokenizer ->", data.build_tokenizer(vocab_size=recipe.lm.d_vocab))
        elif step == "tokens":
            from possae.organism import data

            paths = data.build_token_streams()
            print(json.dumps({c: {s: str(p) for s, p in d.items()} for c, d in paths.items()}, indent=1))
        elif step == "model":
            from possae.devices import default_device
            from possae.organism import lm

            device = str(default_device(args.device))
            if device == "cpu" and args.recipe == "gpu" and not args.force:
                raise SystemExit(f"The gpu recipe trains on {recipe.lm.train_tokens:,} tokens: about "
                                 f"{cpu_hours(recipe.lm):.0f} h on 2 CPU cores. Use a GPU (--device cuda), the CPU "
                                 f"fallback (--recipe cpu: about {cpu_hours(lm_recipe('cpu', args.positional)) * 60:.0f} "
                                 "min), or --force.")
            if args.recipe == "continue" and not args.init_from:
                raise SystemExit("--recipe continue continues a trained model: give its folder with --init-from.")
            facts = lm.train_language_model(recipe.lm, out_dir=out_dir, work_dir=work_dir, device=device,
                                            log_file=work_dir / "lm_training.log", init_from=args.init_from,
                                            compile=device != "cpu", tokenizer_dir=ARTIFACTS / "tokenizer",
                                            token_cache=build_dir() / "tokens", model_name=model_name)
            if twin:  # shipped beside the twin: what trained it (the past-context chapter names its recipe)
                (out_dir / "lm_training.json").write_text(json.dumps(facts, indent=1))
            print(json.dumps({k: v for k, v in facts.items() if k != "history"}, indent=1))
        elif step == "saes":
            from possae.organism import saes

            only = set(args.only.split(",")) if args.only else None
            for r in recipe.saes:
                if only is None or r.sae_id in only:
                    print(json.dumps(saes.train_sae(r, device=args.device, out_dir=out_dir,
                                                     tokenizer_dir=ARTIFACTS / "tokenizer"), indent=1))
        elif step == "sweep":
            from possae.organism import sweep

            print("fine-tuning sweep ->", sweep.run_sweep(device=args.device, out_dir=out_dir, work_dir=work_dir,
                                                          tokenizer_dir=ARTIFACTS / "tokenizer"))
        elif step == "seed-curve":
            from possae.organism import seed_curve

            print("seed curve ->", seed_curve.run_seed_curve(device=args.device, out_dir=out_dir, work_dir=work_dir))
        elif step == "oscillation-comparison":
            from possae.oscillation import write_comparison

            print("oscillation comparison ->", write_comparison(device=args.device))
        elif step == "card":
            from possae.organism import card

            if args.only:  # only the SAEs just retrained are measured again; the rest of the card stays
                print("model card ->", card.refresh_sae_entries(set(args.only.split(",")), recipe, args.device, out_dir))
            else:
                print("model card ->", card.write_model_card(recipe, device=args.device, folder=out_dir,
                                                             work_dir=work_dir))


def _build(args: argparse.Namespace) -> None:
    from possae.book import ChapterFailed, build

    try:
        print("book ->", build(args.profile, args.only, html=not args.no_html, jobs=args.jobs, rerun=args.rerun,
                                  serve=not args.plain_kernels))
    except (ChapterFailed, ValueError) as e:
        raise SystemExit(f"possae build: {e}") from None


def _run(args: argparse.Namespace) -> None:
    from possae.book import ChapterFailed, run_chapter

    try:
        kwargs = {"runs": Path(args.runs).resolve()} if args.runs else {}
        print("page ->", run_chapter(args.chapter, [tuple(p) for p in args.param or []], profile=args.profile, **kwargs))
    except (ChapterFailed, ValueError) as e:
        raise SystemExit(f"possae run: {e}") from None


def _data(args: argparse.Namespace) -> None:
    from possae.evalpack import build_pack, pack_bytes, read_manifest

    out = build_pack(args.data, tokens_per_corpus=args.tokens)
    print(json.dumps(read_manifest(out), indent=1))
    print(f"evaluation pack -> {out} ({pack_bytes(out) / 2**20:.2f} MiB)")


def _standin(args: argparse.Namespace) -> None:
    from possae.book import profile_saes
    from possae.data_paths import data_dir
    from possae.standin import write_standin_cache

    cache = write_standin_cache(args.cache, data_dir(args.data), profile_saes(args.profile))
    print(f"stand-in hub cache -> {cache}\nuse it with: HF_HUB_OFFLINE=1 HF_HUB_CACHE={cache} possae build --profile "
          f"{args.profile}  (numbers describe random weights, not GPT-2)")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that every clean-up (temporary folders, kernels) runs."""


def _interrupted(signum, frame) -> None:
    """Raise Terminated (SIGTERM) or KeyboardInterrupt (SIGINT), the chapter executor's loggers silenced first: the
    exception unwinds through papermill's kernel shutdown, whose reports would follow the interrupt's one line."""
    from possae.book import silence_abandoned_executor

    silence_abandoned_executor()
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


AFTER_INTERRUPT = {  # what an interrupted command leaves, by command
    "run": "nothing was replaced",
    "build": "the chapter being executed replaced nothing (chapters finished before it were kept)",
}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run it; Ctrl-C or SIGTERM ends it with one line and exit status 130 or 143."""
    parser = argparse.ArgumentParser(prog="possae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    org = sub.add_parser("organism", help="rebuild the model organism shipped in possae/artifacts/organism")
    org.add_argument("step", choices=(*STEPS, "sweep", "seed-curve", "oscillation-comparison", "all"),
                     help="a step of the build (all: every one of them); sweep: the fine-tuning sweep of the "
                          "GPT-2-geometry organism (--positional gpt2; possae.organism.sweep); seed-curve: the matching "
                          "suite's seed pair at several training budgets (possae.organism.seed_curve); "
                          "oscillation-comparison: the first organism's curves that the oscillation chapter tests beside "
                          "its model, recorded (possae.oscillation.write_comparison)")
    org.add_argument("--data", help="shared data folder (default: $POSSAE_DATA or ../shared/data)")
    org.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    org.add_argument("--recipe", default="gpu", choices=("gpu", "cpu", "continue"),
                     help="language-model recipe: gpu (recorded, default), cpu (laptop fallback), continue (resume "
                          "a trained model with every position scored; needs --init-from)")
    org.add_argument("--positional", default="standard", choices=("standard", "rotary", "gpt2", "gpt2-rotary"),
                     help="standard: the organism (learned absolute W_pos); rotary: its rotary twin, written to "
                          "possae/artifacts/organism-rotary; gpt2: GPT-2 small's W_pos, frozen, n_ctx 1,024, written "
                          "to possae/artifacts/organism-gpt2pos; gpt2-rotary: that organism's rotary twin (the same "
                          "recipe and tokens), written to possae/artifacts/organism-gpt2pos-rotary (twins: steps model "
                          "and saes)")
    org.add_argument("--init-from", default=None, help="folder holding model/ to continue from (--recipe continue)")
    org.add_argument("--force", action="store_true", help="train the gpu recipe on a CPU anyway")
    org.add_argument("--tokens", type=int, default=None, help="override the language model's training tokens")
    org.add_argument("--only", default=None, help="comma-separated SAE ids to (re)train (saes) or measure again (card)")
    org.set_defaults(func=_organism)
    b = sub.add_parser("build", help="execute the chapters with papermill and build the book's HTML")
    b.add_argument("--profile", default="organism", help="organism (default, offline), quick, or gpt2 (needs network)")
    b.add_argument("--only", default=None, help="execute only this chapter (its file name without .py)")
    b.add_argument("--no-html", action="store_true", help="execute chapters without building the HTML")
    b.add_argument("--jobs", type=int, default=None, help="chapters run at once (default: $POSSAE_JOBS, else 2)")
    b.add_argument("--rerun", action="store_true",
                   help="execute every chapter again, even those whose notebook is up to date")
    b.add_argument("--plain-kernels", action="store_true",
                   help="start every chapter's kernel from scratch, not forked from one that imported the libraries")
    b.set_defaults(func=_build)
    r = sub.add_parser("run", help="execute one chapter with papermill parameters into build/runs/ and render its page")
    r.add_argument("chapter", help="the chapter's file name without .py, e.g. positional")
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a parameter of the chapter (VALUE read as YAML: 3, 0.5, [a, b], None); repeatable")
    r.add_argument("--profile", default="organism", help="profile whose parameters come first: organism, quick or gpt2")
    r.add_argument("--runs", default=None, help="folder that holds the runs (default: build/runs in the repository)")
    r.set_defaults(func=_run)
    d = sub.add_parser("data", help="derive the evaluation pack (possae/artifacts/evalpack) from the full data")
    d.add_argument("step", choices=("pack",))
    d.add_argument("--data", help="shared data folder (default: $POSSAE_DATA or ../shared/data)")
    d.add_argument("--tokens", type=int, default=32_768, help="held-out tokens per corpus and tokenizer")
    d.set_defaults(func=_data)
    s = sub.add_parser("standin", help="write a random-weight stand-in of gpt2-small and its SAEs into a hub cache folder")
    s.add_argument("cache", help="the Hugging Face hub cache folder to write (use it as $HF_HUB_CACHE)")
    s.add_argument("--data", help="data folder holding gpt2-small/ (default: $POSSAE_DATA or ../shared/data)")
    s.add_argument("--profile", default="gpt2", help="the profile whose SAEs to write")
    s.set_defaults(func=_standin)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    try:
        args.func(args)
    except KeyboardInterrupt as e:
        left = AFTER_INTERRUPT.get(args.command)
        print(f"possae {args.command}: interrupted" + (f"; {left}" if left else ""), file=sys.stderr, flush=True)
        raise SystemExit(128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)) from None


if __name__ == "__main__":
    main()

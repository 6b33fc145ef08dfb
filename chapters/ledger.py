# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Claims ledger
#
# **Overview.** The two studies this book follows, and the discussion around them, make claims that can be checked:
# numbers, directions of an effect, remedies that should work. This chapter lists every such claim the book can
# check, who made it (the first study, the second, or a comment on one), the study's number where it gives one, this
# book's number, and a verdict: **confirmed**, **refuted**, or **not testable here**, each with its reason and a link
# to the section that shows it. The book's own remedies for the failure past the context are judged in a table of
# their own.
#
# **Prerequisites.** Every other chapter: the ledger computes nothing itself. It reads the values the other
# chapters glued into their executed pages, from the same build, and applies one rule per claim. The rules and their
# thresholds are in `possae.ledger`, each tested on constructed values; the studies' own numbers are citations,
# kept there as named constants.

# %% tags=["parameters", "remove-cell"]
chapters_dir = "build/book/chapters"  # the executed chapters of the build it reads (possae build sets it)

# %% tags=["remove-cell"]
from possae.glued import glue_all
from possae.ledger import LedgerParams, analyze, read_chapters

params = LedgerParams.from_namespace(globals())
result = analyze(read_chapters(params.chapters_dir))
glue_all(result.glued())

# %% [markdown]
# ## The ledger
#
# The "model" column names the model each row's numbers come from. {glue:text}`ledger_models_sentence` Where a study's number
# belongs to GPT-2 small's SAEs only (a count of features out of 24,576), the ledger tests the form of the claim that
# carries over to another model and says which form in the reason. The same chapter run on the `gpt2` profile
# (`possae build --profile gpt2`) fills the columns with gpt2-small and `gpt2-small-res-jb`; those numbers need a
# network, since the offline stand-in of gpt2-small has random weights and its pages say so.

# %% tags=["remove-input"]
result.table()

# %% [markdown]
# ## Verdicts
#
# {glue:text}`ledger_count_sentence`
#
# {glue:text}`ledger_confirmed_sentence`
#
# {glue:text}`ledger_refuted_sentence`
#
# {glue:text}`ledger_untestable_sentence`
#
# ## The book's own remedies
#
# The fixes for the failure past the context are this book's constructions, not claims of the studies: (a)
# encoding the token embedding alone and adding `W_pos` back, (b) reading the token at the last trained position,
# (c) keeping the SAE's token part with the exact `W_pos`, and (d) an SAE trained on full contexts (the
# [length-generalization](length_generalization) chapter defines them). They are judged by the same rule, apart from the
# claims and left out of the counts above. {glue:text}`ledger_remedies_sentence`

# %% tags=["remove-input"]
result.remedies_table()

# %% [markdown]
# ## One number per quantity
#
# A quantity shown on two pages comes from one definition and one sample, or the pages name the sample each uses. The
# table lists every quantity this build shows on two or more pages (the list is `possae.quantities`); the ledger reads
# every glued value of every page and checks it. {glue:text}`ledger_quantities_sentence`

# %% tags=["remove-input"]
result.quantities().style.hide(axis="index")

# %% [markdown]
#
# A verdict holds for the model the column names: a claim about GPT-2 small's SAEs that is refuted here is refuted on
# this model, and may still hold on GPT-2. A claim is not testable here when the measurement it needs does not exist
# on this build (a frequency ratio needs windows long enough to resolve the study's periods), never because of its
# result.

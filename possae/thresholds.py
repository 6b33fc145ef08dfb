"""Thresholds that both a chapter's prose and the ledger's verdicts read, kept in a module with no heavy imports (the
ledger's kernel loads it without torch's model libraries)."""

RESTORE_FACTOR = 2.0  # a fix restores the SAE if its nMSE past the context is within this factor of the SAE's inside
SAME_BAND = 1.1  # two errors within this factor of each other read as "about the same"
NEAR_0, NEAR_1 = 0.05, 0.95  # cut-offs of "R² near 0" and "R² near 1"
AMPLITUDE_DROP = 0.5  # zeroing W_pos "removes the pattern": the ablated curve correlates at most 0.5 with the normal
# one over positions 1..C-1 (a correlation of 0.5 shares a quarter of its variance with it)
LOSS_FACTOR = 2.0  # the SAE "costs more past the context" when its added loss there is this many times its inside
MOST = 0.5  # "the first token's activation is higher": above the in-context average for more than half the SAEs

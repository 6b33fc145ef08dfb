"""Thresholds that both a chapter's prose and the ledger's verdicts read, kept in a module with no heavy imports (the
ledger's kernel loads it without torch's model libraries)."""

RESTORE_FACTOR = 2.0  # a fix restores the SAE if its nMSE past the context is within this factor of the SAE's inside
SAME_BAND = 1.1  # two errors within this factor of each other read as "about the same"
NEAR_0, NEAR_1 = 0.05, 0.95  # cut-offs of "R² near 0" and "R² near 1"

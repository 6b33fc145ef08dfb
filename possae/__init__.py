"""possae: positional features in sparse autoencoders, computed for a research report written as code."""

__version__ = "0.1.0"

import possae.progress  # noqa: E402,F401  (imports tqdm.auto once, before transformer_lens does, without its warning)

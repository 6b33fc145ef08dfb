"""Reconstruction metrics of an SAE on a model's activations."""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from possae.loaders import sae_layer
from possae.progress import tqdm


@torch.no_grad()
def sae_metrics(model, sae, tokens: Int[Tensor, "batch pos"], batch_size: int = 64) -> dict[str, float]:
    """Return L0, explained variance, MSE per dimension and dead-feature share of an SAE over `tokens`."""
    hook = sae.cfg.metadata.hook_name
    l0 = sq_err = sum_x2 = 0.0
    n = 0
    sum_x = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for i in tqdm(range(0, len(tokens), batch_size), desc="SAE metrics", leave=False):
        _, cache = model.run_with_cache(tokens[i : i + batch_size].to(model.cfg.device), names_filter=hook,
                                        stop_at_layer=sae_layer(sae) + 1)
        x = cache[hook].flatten(0, 1).to(sae.device)
        f = sae.encode(x)
        sq_err += (sae.decode(f) - x).double().pow(2).sum().item()
        l0 += (f > 0).sum().item()
        sum_x += x.double().sum(0).cpu()
        sum_x2 += x.double().pow(2).sum().item()
        fired |= (f > 0).any(0).cpu()
        n += x.shape[0]
    total_var = sum_x2 - (sum_x**2).sum().item() / n
    return {"tokens": n, "l0": l0 / n, "explained_variance": 1 - sq_err / total_var,
            "mse": sq_err / (n * sae.cfg.d_in), "dead_share": 1 - fired.float().mean().item()}

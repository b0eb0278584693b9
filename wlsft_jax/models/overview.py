"""Parameter overview logged when a model is built: clu's table plus counts per tower."""
from absl import logging
from clu import parameter_overview
import flax.linen as nn


def param_counts(params) -> dict[str, int]:
    """Parameter count per top-level entry (e.g. "img", "txt", "logit_scale") and "total"."""
    params = nn.unbox(params)
    counts = {name: parameter_overview.count_parameters({name: sub})
              for name, sub in params.items()}
    counts["total"] = sum(counts.values())
    return counts


def log_param_counts(params, *, name: str = "model") -> dict[str, int]:
    """Logs clu's parameter table (shapes only) and the per-tower counts; returns the counts."""
    params = nn.unbox(params)
    parameter_overview.log_parameter_overview(params, include_stats=False,
                                              msg=f"{name} parameters:")
    counts = param_counts(params)
    logging.info("%s parameter counts: %s", name,
                 ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    return counts

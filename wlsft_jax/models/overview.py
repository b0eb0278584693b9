"""Parameter overview when a model is built: counts per tower in the log, clu's full table
(one row per array) in a file when one is given."""
from absl import logging
from clu import parameter_overview
from etils import epath
import flax.linen as nn


def param_counts(params) -> dict[str, int]:
    """Parameter count per top-level entry (e.g. "img", "txt", "logit_scale") and "total"."""
    params = nn.unbox(params)
    counts = {name: parameter_overview.count_parameters({name: sub})
              for name, sub in params.items()}
    counts["total"] = sum(counts.values())
    return counts


def log_param_counts(params, *, name: str = "model",
                     table_path: epath.PathLike | None = None) -> dict[str, int]:
    """Logs the per-tower counts (one line) and writes clu's parameter table (shapes only) to
    `table_path` if given; returns the counts."""
    params = nn.unbox(params)
    counts = param_counts(params)
    if table_path is not None:
        epath.Path(table_path).write_text(
            parameter_overview.get_parameter_overview(params, include_stats=False) + "\n")
    logging.info("%s parameter counts: %s%s", name,
                 ", ".join(f"{k}={v:,}" for k, v in counts.items()),
                 f" (table: {table_path})" if table_path is not None else "")
    return counts

"""`lp`: linear probing through the training loop. It is `ft` with a schedule that freezes
everything but `head/...` (configs set it); LP-FT is `lp`, then `ft` from its output."""
from wlsft_jax.methods import ft

FROM_SCRATCH = False
RUNS_ONCE = False
EVALUATOR = "zero_shot"
STAGE_KEYS = ()
build = ft.build

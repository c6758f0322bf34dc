"""``python -m bltkit.evaluation ...``: lm-evaluation-harness's own command line with the
``bltkit`` model registered (the harness finds outside models only through its registry).

    python -m bltkit.evaluation run --model bltkit --model_args pretrained=runs/mine --tasks hellaswag
"""
from lm_eval.__main__ import cli_evaluate

from . import lm  # noqa: F401  (registers "bltkit")

if __name__ == "__main__":
    cli_evaluate()

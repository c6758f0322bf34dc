"""Downstream tasks on a bundle through lm-evaluation-harness: ``bltkit eval --model B --tasks ...``.

``run_tasks`` checks the task names against the harness's task index (its built-in tasks and
any ``include_path`` folder of task YAMLs) before loading anything, then runs
``lm_eval.simple_evaluate`` with a ``BltkitLM`` (``lm.py``). Indexing the harness's ~15,000
built-in task files takes tens of seconds; ``builtin_tasks=False`` (``--no-builtin-tasks``)
indexes only the local folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

MISSING_EXTRA = 'lm-evaluation-harness is not installed: pip install "bltkit[eval]"'


def require_harness() -> None:
    """A clear error (naming the extra to install) when ``lm_eval`` cannot be imported."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ValueError(f"--tasks needs {MISSING_EXTRA}") from None


def run_tasks(model, tasks: Sequence[str], include_path: Optional[str] = None, builtin_tasks: bool = True,
              num_fewshot: Optional[int] = None, limit: Optional[int] = None, batch_size: int = 8,
              window: Optional[int] = None, overlap: Optional[int] = None, bootstrap_iters: int = 100000,
              progress: bool = True, seed: int = 0) -> dict:
    """The harness's results for ``tasks`` on ``model`` (a ``Handle`` or a bundle directory):
    ``{"results": {task: {metric: value}}, "n-shot": ..., "versions": ..., "configs": ...}``."""
    require_harness()
    if not tasks:
        raise ValueError("no task given")
    if include_path is not None and not Path(include_path).is_dir():
        raise FileNotFoundError(f"--include-path folder not found: {include_path!r}")
    if not builtin_tasks and include_path is None:
        raise ValueError("--no-builtin-tasks needs --include-path (the folder to find the tasks in)")
    import logging

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from .lm import BltkitLM

    if not progress:
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
    manager = TaskManager(include_path=include_path, include_defaults=builtin_tasks)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known and not manager.match_tasks([t])]
    if unknown:
        where = " or ".join(([f"the harness's built-in tasks"] if builtin_tasks else [])
                            + ([f"--include-path {include_path}"] if include_path else []))
        raise ValueError(f"unknown task(s) {unknown}: not among {where} (list them with `lm-eval ls tasks`)")
    lm = BltkitLM(model, batch_size=batch_size, window=window, overlap=overlap, progress=progress)
    res = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, num_fewshot=num_fewshot, limit=limit,
                          bootstrap_iters=bootstrap_iters, log_samples=False, random_seed=seed,
                          numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    return {k: res[k] for k in ("results", "groups", "n-shot", "versions", "higher_is_better") if k in res}


def format_results(results: dict) -> str:
    """The harness's own results table."""
    from lm_eval.utils import make_table

    return make_table(results)


__all__ = ["MISSING_EXTRA", "require_harness", "run_tasks", "format_results"]

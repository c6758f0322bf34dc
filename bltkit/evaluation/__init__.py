"""Evaluation (``bltkit eval``): held-out bits per byte, and downstream tasks through lm-evaluation-harness.

- ``bpb.py``       bits per byte of data sources, per source and over all, with a standard error over documents
- ``lm.py``        ``BltkitLM``: a bundle as an lm-evaluation-harness model, registered as ``bltkit``
- ``tasks.py``     ``run_tasks``: the harness's tasks (built-in or a local folder) on a bundle
- ``__main__.py``  ``python -m bltkit.evaluation``: the harness's own command line, with ``bltkit`` registered

The log-probabilities all come from ``bltkit.inference.scoring``. ``lm.py`` needs the optional
extra ``pip install "bltkit[eval]"``; nothing else here does.
"""

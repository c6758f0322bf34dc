"""Inference: the public API (``bltkit.load``), cached generation, sampling, scoring.

``api.py`` the handle; ``generate.py`` the loop; ``stepper.py`` / ``blt_cached.py`` /
``lm_cached.py`` / ``cache.py`` / ``boundaries.py`` the cached path; ``recompute.py`` the uncached
reference path; ``sampling.py``; ``bench.py`` the generation benchmark hook.
"""

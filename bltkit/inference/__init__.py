"""Inference: the public API (``bltkit.load``), cached generation, sampling, scoring.

``api.py`` the handle; ``generate.py`` the loop; ``stepper.py`` the cached path's bookkeeping
around the models' own cached forwards (``model(ids, cache=...)``; the caches live with the
models, ``bltkit.nn.kv_cache`` and ``bltkit.model.cache``); ``boundaries.py`` patch boundaries
byte by byte; ``recompute.py`` the uncached reference loop (tests and bench); ``sampling.py``;
``scoring.py`` batched, windowed log-probabilities (``Handle.score``, ``bltkit eval``); ``bench.py``
the generation benchmark hook.
"""

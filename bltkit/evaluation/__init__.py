"""Evaluation (``bltkit eval``): held-out bits per byte of data sources under a bundle.

- ``bpb.py``  bits per byte per source and over all, with a standard error over documents

The log-probabilities come from ``bltkit.inference.scoring`` (batched, windowed), the same code
``Handle.score`` reads.
"""

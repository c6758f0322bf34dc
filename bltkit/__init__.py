"""bltkit: tokenizer-free byte-level language models (BLT, entropy patching, fixed-K patch training)."""
__version__ = "0.1.0"


def load(path, **kwargs):
    """Load a bundle directory (a training run's output directory is one); see ``bltkit.inference``."""
    from .inference.api import load as _load

    return _load(path, **kwargs)


__all__ = ["load", "__version__"]

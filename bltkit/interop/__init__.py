"""Interoperability: Hugging Face transformers' BLT and the reference (facebookresearch/blt) format.

- ``hf``: config and weight mapping between HF ``BltConfig``/``BltForCausalLM`` and bltkit
  (docs/reference-semantics.md §16), with the semantic gaps refused or spelled out;
- ``reference``: import of the reference's ``consolidated.pth`` + ``params.json`` (docs/reference-semantics.md §6-§11, §15);
- ``entropy``: the patcher / entropy-model weights of either format, when bltkit's
  ``entropy_model`` package is installed;
- ``checkpoint``: reading safetensors and checking every tensor against a bltkit model.

The ``bltkit convert`` command (``bltkit/commands/convert.py``) is the user-facing entry point.
"""

"""Interoperability: Hugging Face transformers' BLT and the reference (facebookresearch/blt) format.

- ``hf``: config and weight mapping between HF ``BltConfig``/``BltForCausalLM`` and bltkit
  (blt-reference §11), with the semantic gaps (§11.3) refused or spelled out;
- ``reference``: import of the reference's ``consolidated.pth`` + ``params.json`` (§4-§6, §9);
- ``entropy``: the patcher / entropy-model weights of either format, when bltkit's
  ``entropy_model`` package is installed;
- ``checkpoint``: reading safetensors and checking every tensor against a bltkit model.

The ``bltkit convert`` command (``bltkit/commands/convert.py``) is the user-facing entry point.
"""

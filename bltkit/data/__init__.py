"""Bytes and documents, the bottom layer of every pipeline (docs/training.md, "Data").

- ``vocab.py``   the 260-id byte vocabulary (byte b -> b + 4; BOE/pad 0, BOS 1, EOS 2)
- ``corpus.py``  the built-in corpus shipped as package data (``builtin``, ``builtin:valid``, ``builtin/kjv``)
- ``sources.py`` files, folders, globs, ``hf:`` datasets and mixtures of them; the one held-out split
- ``packing.py`` documents -> rows of bytes or patches, in the reference's conventions

The run's data config and its resumable loader, which also patch documents, sit above the
patching layer: ``bltkit.training.data``.
"""

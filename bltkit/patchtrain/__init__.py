"""Fixed-K patch-level training (Shao et al., arXiv 2407.12665) on BLT's global backbone.

- ``config.py``   ByteLMConfig (the backbone's sizes), loaded from ``configs/bytelm/*.yaml``
- ``model.py``    ByteLM: byte embedding -> BLT's GlobalTransformer -> norm -> head over 260 ids
- ``loss.py``     the bag-of-K next-patch loss (K=1: ordinary next-byte cross-entropy)
- ``task.py``     ByteLMTask: the trainer's ``Task`` for kind ``bytelm`` (one loop for all kinds)
- ``schedule.py`` the two phases (patch, then byte): plan under a byte or FLOP budget, and run
- ``speed.py``    ``patchtrain_phase_speed()``: bytes/s of both phases in one process
"""

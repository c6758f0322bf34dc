"""Training: one loop for every model kind (BLT, entropy model, fixed-K byte LM).

    from bltkit.training import load_train_config, train
    result = train(load_train_config("tiny", ["steps=100"]), "runs/tiny")

Modules: ``config`` (typed run config), ``data`` (the data config and the one pipeline: sources,
held-out split, packing, resumable batches), ``task`` (the per-kind ``Task`` interface and
registry), ``blt_task`` / ``entropy_task`` / ``hnet_task`` (tasks), ``blt_init`` (a BLT run's
``init_from`` / ``init_global_from``), ``patch_source`` (patcher settings -> the run's
``DocumentPatcher``), ``precomputed`` (entropies from ``bltkit precompute`` shards),
``optim`` (AdamW groups),
``schedule`` (cosine / WSD / constant), ``flops`` (analytic FLOPs), ``checkpoint`` (atomic
checkpoints), ``metrics`` (metrics.jsonl, TensorBoard), ``distributed`` (DDP / FSDP2, torchrun),
``loop`` (the loop). CLI: ``bltkit train`` and ``bltkit train-entropy``.
"""
from .config import TrainConfig, load_train_config, train_config_from_dict
from .loop import TrainingDiverged, TrainResult, train
from .task import TASKS, Task, register_task

__all__ = ["TrainConfig", "load_train_config", "train_config_from_dict", "train", "TrainResult",
           "TrainingDiverged", "Task", "TASKS", "register_task"]

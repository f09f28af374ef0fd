"""Training side of hbt-tools: InfoNCE loss, gradient caching, checkpoints, DDP and the loop.

``from hbt_tools.training import TrainConfig, train`` runs what ``hbt-train`` runs. The names are
imported lazily so that the torch-free modules (batch_format, layout, preflight) stay light.
"""
__all__ = ["TrainConfig", "train"]


def __getattr__(name):
    if name in __all__:
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(name)

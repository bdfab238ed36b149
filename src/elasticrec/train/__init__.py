"""Training: batching, losses, optimisation loop, checkpoints and run directories."""

from elasticrec.train.trainer import Trainer, train

__all__ = ["Trainer", "train"]

"""Training layer: the JaFR objective, models, datasets and a crash-safe, DDP-ready training loop.

    from jafr_kernels.train import TrainConfig, train_model, build_model, load_dataset, jafr_objective
"""
from jafr_kernels.train.checkpoint import CheckpointError, load_checkpoint, load_latest, save_checkpoint
from jafr_kernels.train.data import DATASETS, DatasetError, DatasetInfo, dataset_info, get_batch, load_dataset
from jafr_kernels.train.methods import METHOD_NAMES as METHODS
from jafr_kernels.train.loop import DoubleBackwardError, NonFiniteLossError, TrainConfig, TrainResult, load_trained_model, train_model
from jafr_kernels.train.models import MODELS, PreActResNet18, SmallCNN, build_model
from jafr_kernels.train.objective import (
    ObjectiveResult,
    ce_objective,
    frozen_bn_stats,
    gradalign_objective,
    jafr_objective,
)

__all__ = [
    "CheckpointError", "DATASETS", "DatasetError", "DoubleBackwardError", "DatasetInfo", "METHODS", "MODELS", "NonFiniteLossError",
    "ObjectiveResult", "PreActResNet18", "SmallCNN", "TrainConfig", "TrainResult", "build_model", "ce_objective", "dataset_info",
    "frozen_bn_stats", "get_batch", "gradalign_objective", "jafr_objective",
    "load_checkpoint", "load_dataset", "load_latest", "load_trained_model", "save_checkpoint", "train_model",
]

"""The HISTEX method on plain arrays: context points, targets, training and prediction."""

from histex.model.context import ContextPoints, context_points, nearest_context
from histex.model.fit import FitConfig, Prediction, Problem, predict, resolve_device, train
from histex.model.targets import TargetScaler

__all__ = [
    "ContextPoints",
    "FitConfig",
    "Prediction",
    "Problem",
    "TargetScaler",
    "context_points",
    "nearest_context",
    "predict",
    "resolve_device",
    "train",
]

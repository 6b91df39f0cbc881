"""The HISTEX method on plain arrays: context points, targets, training and prediction."""

from histex.model.context import ContextPoints, context_points, nearest_context
from histex.model.ensemble import Ensemble
from histex.model.fit import FitConfig, History, Problem, resolve_device, train
from histex.model.predict import Prediction, predict, predict_blocks
from histex.model.settings import PRESETS, HistexSettings
from histex.model.targets import TargetScaler

__all__ = [
    "PRESETS",
    "ContextPoints",
    "Ensemble",
    "FitConfig",
    "HistexSettings",
    "History",
    "Prediction",
    "Problem",
    "TargetScaler",
    "context_points",
    "nearest_context",
    "predict",
    "predict_blocks",
    "resolve_device",
    "train",
]

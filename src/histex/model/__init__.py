"""The HISTEX method on plain arrays: context points, targets, training and prediction."""

from histex.model.context import ContextPoints, context_points, nearest_context
from histex.model.ensemble import Ensemble
from histex.model.fit import FitConfig, History, Problem, resolve_device, train
from histex.model.predict import Prediction, predict, predict_blocks
from histex.model.readout import ReadoutFit, refit_readout, ridge_gcv
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
    "ReadoutFit",
    "TargetScaler",
    "context_points",
    "nearest_context",
    "predict",
    "predict_blocks",
    "refit_readout",
    "resolve_device",
    "ridge_gcv",
    "train",
]

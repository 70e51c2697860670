"""Neuron-gradient analysis (GN-FT's observation, measured and plotted) and a backdoor scan from clean data."""

from ..neurons import NeuronLayer, UnknownLayerError, default_layer_names, neuron_layer_names, resolve_layers
from .analyze import ANALYSIS_FILE, AnalysisArguments, run_analysis
from .categories import CATEGORIES, NeuronCategories, categorize_neurons, mean_by_category
from .gradients import GradientProfile, neuron_gradient_profile
from .plots import plot_before_after, plot_gradient_by_category, plot_layer_summary
from .scan import (
    STATISTICS,
    ScanCalibration,
    ScanError,
    ScanResult,
    auroc,
    calibrate_threshold,
    scan_model,
)

__all__ = [
    "ANALYSIS_FILE",
    "CATEGORIES",
    "STATISTICS",
    "AnalysisArguments",
    "GradientProfile",
    "NeuronCategories",
    "NeuronLayer",
    "ScanCalibration",
    "ScanError",
    "ScanResult",
    "UnknownLayerError",
    "auroc",
    "calibrate_threshold",
    "categorize_neurons",
    "default_layer_names",
    "mean_by_category",
    "neuron_gradient_profile",
    "neuron_layer_names",
    "plot_before_after",
    "plot_gradient_by_category",
    "plot_layer_summary",
    "resolve_layers",
    "run_analysis",
    "scan_model",
]

"""Lightning callbacks: run bookkeeping (history, divergence, interruption) and the
diagnostics (gradients, layer outputs, dead neurons, activation parameters)."""

from actlab.callbacks.activation_parameters import ActivationParameterMonitor
from actlab.callbacks.activation_plot import ActivationPlot
from actlab.callbacks.dead_neurons import DeadNeuronCounter, DeadNeuronMonitor, dead_neuron_metrics, scan_dead_neurons
from actlab.callbacks.divergence import DivergenceMonitor
from actlab.callbacks.early_stopping import early_stopping
from actlab.callbacks.gradient_flow import GradientFlow
from actlab.callbacks.gradient_histograms import GradientHistograms, weight_gradients
from actlab.callbacks.layer_outputs import LayerOutputHistograms
from actlab.callbacks.lightning_callbacks import EarlyStopping, ModelCheckpoint
from actlab.callbacks.rate_halving import RateHalving, surviving_rates
from actlab.callbacks.run_history import RunHistory

__all__ = [
    "ActivationParameterMonitor",
    "ActivationPlot",
    "DeadNeuronCounter",
    "DeadNeuronMonitor",
    "DivergenceMonitor",
    "EarlyStopping",
    "GradientFlow",
    "GradientHistograms",
    "LayerOutputHistograms",
    "ModelCheckpoint",
    "RateHalving",
    "RunHistory",
    "dead_neuron_metrics",
    "early_stopping",
    "scan_dead_neurons",
    "surviving_rates",
    "weight_gradients",
]

"""Lightning callbacks: run bookkeeping and the diagnostics of SPEC section 5."""

from actlab.callbacks.activation_parameters import ActivationParameterMonitor
from actlab.callbacks.activation_plot import ActivationPlot
from actlab.callbacks.dead_neurons import DeadNeuronCounter, DeadNeuronMonitor, dead_neuron_ratios, scan_dead_neurons
from actlab.callbacks.divergence import DivergedError, DivergenceMonitor
from actlab.callbacks.gradient_histograms import GradientHistograms
from actlab.callbacks.interruption import InterruptionCheckpoint
from actlab.callbacks.layer_outputs import LayerOutputHistograms
from actlab.callbacks.run_history import RunHistory

__all__ = [
    "ActivationParameterMonitor",
    "ActivationPlot",
    "DeadNeuronCounter",
    "DeadNeuronMonitor",
    "DivergedError",
    "DivergenceMonitor",
    "GradientHistograms",
    "InterruptionCheckpoint",
    "LayerOutputHistograms",
    "RunHistory",
    "dead_neuron_ratios",
    "scan_dead_neurons",
]

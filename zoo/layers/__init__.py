"""Spiking building blocks shared by spikezoo models."""
from .common import NeuronFactory, model_neuron, multistep, neuron_factory, reset_neurons

__all__ = ["NeuronFactory", "model_neuron", "multistep", "neuron_factory", "reset_neurons"]

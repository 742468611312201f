"""Spiking building blocks shared by spikezoo models."""
from .common import NeuronFactory, multistep, neuron_factory

__all__ = ["NeuronFactory", "multistep", "neuron_factory"]

"""spikezoo model registry and models (Spike2Former, SpikeFPN, Meta-SpikeFormer).

The registry and the models are being built (issue 3); the package is
declared now so that the layout of DESIGN.md installs from the start.
"""

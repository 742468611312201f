"""Spike2Former (Lei et al., AAAI 2025): pixel decoder with SDTE, spike-driven transformer decoder, SDME head."""

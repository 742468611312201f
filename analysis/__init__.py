"""Firing rates, spike degradation, query mask patterns and energy (not built yet)."""

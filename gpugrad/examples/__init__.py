"""Runnable examples: ``python -m gpugrad.examples.digits``."""

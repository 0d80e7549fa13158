"""Adapters that let other pruning code use OCNNA scores."""

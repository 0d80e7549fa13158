"""Pruning to a budget (MACs, parameters or latency): per-group widths
(``allocation``) from criterion values and measured loss curves
(``sensitivity``, with its memo ``lossmemo``), met with a real count
(``fit``, ``latency``), then surgery (``search``).
"""

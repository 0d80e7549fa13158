"""Benchmark suites: criteria at equal structure (``equal_structure``) and
methods at equal cost (``equal_cost``), run by one engine (``engine``), their
tables and plots in ``tables``, both
resumable from their results file (``results_file``).
"""

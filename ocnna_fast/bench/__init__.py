"""Benchmark suites: criteria at equal structure (``equal_structure``) and
methods at equal cost (``equal_cost``, tables in ``cost_tables``), both
resumable from their results file (``results_file``).
"""

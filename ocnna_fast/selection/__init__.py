"""Stage 2, selection: which channels of each coupled group to keep.  The
groups of a model (``groups``, Torch-Pruning's dependency graph), the
percentile and count rules over criterion values (``rules``), the criteria
compared side by side (``criteria``) and the reconstruction criterion
(``elimination``).
"""

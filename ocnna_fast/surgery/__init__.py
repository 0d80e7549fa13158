"""Stage 3, surgery: the physically smaller model.  Pruning by a rule
(``prune``), plans on disk and their replay (``plans``), and which channels
each layer lost (``channel_maps``).
"""

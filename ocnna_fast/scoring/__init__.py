"""Stage 1, scoring: one forward pass folds every conv's maps into streaming
per-filter accumulators (``scorer``, ``stats``, ``overlap``), with
checkpoints and rank merges (``runstate``), the results file (``scores``),
where maps are read (``taps``, ``layers``) and the slow oracle
(``reference``).  The contract is docs/scoring.md.
"""

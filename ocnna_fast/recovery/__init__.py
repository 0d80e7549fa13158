"""Stage 4, recovery after surgery: BatchNorm re-estimation (``batchnorm``),
its folded-BatchNorm counterpart (``compensation``, ``foldedbn``), what
follows surgery for every model (``recover``), the least-squares refit
(``refit``) and distillation or fine-tuning (``distill``).
"""

"""Stage 4, recovery after surgery: BatchNorm re-estimation (``batchnorm``),
its folded-BatchNorm counterpart (``foldedbn``), bias compensation and the
dispatcher over all corrections (``compensation``), the least-squares refit
(``refit``) and distillation or fine-tuning (``distill``).
"""

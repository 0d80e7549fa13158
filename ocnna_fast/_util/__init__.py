"""Helpers every stage shares and no user calls: atomic writes, train/eval
flags, device placement, ``torch.distributed`` facts, and the checks of
everything read back from outside.
"""

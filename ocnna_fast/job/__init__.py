"""The prune job as named steps (``pipeline``): score, select, surgery,
recover, evaluate, measure; and what a job measured (``result``).
"""

"""The local search under two processes (gloo on CPU, as torchrun starts it)
decides as one process does: moves drawn two at a time, one measured by
each process, the first that lowers the loss kept and the generator wound
back to just after it, so the moves drawn after a kept one are drawn again
from the new allocation."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import torch

from ocnna_fast._util.distributed import shut_down
from ocnna_fast.budget.allocation import GroupInfo
from ocnna_fast.budget.sensitivity import refine

WIDTHS = {"a": 16, "b": 16, "c": 16, "d": 16}
WEIGHTS = {"a": 9.0, "b": 1.0, "c": 3.0, "d": 0.5}
# most removed from the costly groups, so many moves improve it; "d" has two widths, so a move that
# would narrow it further, or widen it past whole, is no move
START = {"a": 6, "b": 12, "c": 8, "d": 12}
STEPS = 40


class _Memo:
    def __init__(self) -> None:
        self.losses: dict = {}

    def merge(self, losses: dict) -> None:
        self.losses.update(losses)


class _SharedLoss:
    """A stand-in for ``MaskedEvaluator`` with its memo: a candidate's loss
    is ``weight * (removed / width) ** 2`` summed over groups, measured once
    (``evaluations`` counts what this process measured) and then served by
    the memo, which ``share_out`` fills with the other processes' losses."""

    def __init__(self) -> None:
        self.groups = {r: (GroupInfo(r, w, np.zeros(w)), [], []) for r, w in WIDTHS.items()}
        self.memo = _Memo()
        self.evaluations = 0
        self.evaluations_per_process = None

    def loss(self, removed) -> float:
        key = json.dumps(sorted(removed.items()))
        if key not in self.memo.losses:
            self.evaluations += 1
            self.memo.losses[key] = sum(WEIGHTS[r] * (n / WIDTHS[r]) ** 2 for r, n in removed.items())
        return self.memo.losses[key]

    def anchor(self, removed) -> None:
        pass


def _search() -> dict:
    ev = _SharedLoss()
    options = {r: list(range(w, 0, -1)) for r, w in WIDTHS.items()}
    options["d"] = [16, 12]
    budget = sum(START.values())
    record: dict = {}
    best, before, after = refine(ev, START, options, lambda k: sum(k.values()) <= budget, STEPS, 0, record=record)
    return {"best": best, "before": before, "after": after, "counts": record, "measured": ev.evaluations}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    finished = False
    try:
        with open(f"{out}.rank{rank}", "w") as f:
            json.dump(_search(), f)
        finished = True
    finally:
        shut_down(finished)


def test_two_processes_keep_the_moves_one_process_keeps(tmp_path):
    one = _search()
    assert one["counts"]["kept"] >= 3, one  # moves kept, so the generator is wound back (else nothing is tested)
    assert one["counts"]["proposed"] < STEPS, one  # and draws with no move, which a round skips
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "search")
    torch.multiprocessing.spawn(_worker, args=(port, out), nprocs=2)
    ranks = [json.loads(open(f"{out}.rank{r}").read()) for r in range(2)]
    for two in ranks:
        assert two["best"] == one["best"] and two["after"] == one["after"] and two["before"] == one["before"]
        assert two["counts"] == one["counts"]  # the same moves proposed, measured and kept, in the same order
    # each process measured about half: a round whose first move is kept wastes its second
    for two in ranks:
        assert two["measured"] <= one["measured"] / 2 + one["counts"]["kept"] + 1, (ranks, one)
    assert sum(two["measured"] for two in ranks) >= one["measured"]

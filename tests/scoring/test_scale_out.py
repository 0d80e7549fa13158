"""Multi-process scoring over torch.distributed, and resumable scoring runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ocnna_fast import Scores, score
from ocnna_fast._util.distributed import shut_down


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 5, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).mean((2, 3))


def make_model():
    torch.manual_seed(0)
    return Net().eval()


def make_batches(n=8, size=5):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(size, 3, 10, 12, generator=g) for _ in range(n)]


def _rank_main(rank, world, init_file, out_dir, n_components):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    finished = False
    try:
        mine = make_batches()[rank::world]  # each rank scores half of the batches
        s = score(make_model(), mine, n_components=n_components, progress=False)
        s.save(os.path.join(out_dir, f"rank{rank}.safetensors"))
        finished = True
    finally:
        shut_down(finished)


@pytest.mark.parametrize("n_components", [None, 0.9])
def test_two_gloo_ranks_equal_one_process(tmp_path, n_components):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path), n_components), nprocs=2, join=True)
    single = score(make_model(), make_batches(), n_components=n_components, progress=False, distributed=False)
    ranks = [Scores.load(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    for name, want in single.items():
        for got in ranks:
            assert got[name].count == want.count == 40
            rel = ((got[name].score - want.score).abs() / want.score.abs()).max().item()
            assert rel <= 1e-9, (name, rel)
        assert torch.equal(ranks[0][name].score, ranks[1][name].score)  # identical on every rank


def test_distributed_true_without_a_group_is_an_error():
    with pytest.raises(ValueError, match="process group"):
        score(make_model(), make_batches(1), distributed=True, progress=False)


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_scale_out import make_model, make_batches
    from ocnna_fast import score

    def slow():
        for b in make_batches():
            time.sleep(0.4)
            yield b

    score(make_model(), slow(), n_components=0.9, checkpoint={ckpt!r}, checkpoint_every=1, progress=False)
    print("finished", flush=True)
""")


def _checkpointed_batches(path):
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return int(f.metadata()["batches"])
    except Exception:
        return 0


def test_killed_run_resumes_to_the_same_scores(tmp_path):
    ckpt = str(tmp_path / "run.ckpt")
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=os.path.dirname(__file__), ckpt=ckpt))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _checkpointed_batches(ckpt) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the child never checkpointed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _checkpointed_batches(ckpt)
    assert 3 <= done < 8  # killed mid-run

    resumed = score(make_model(), make_batches(), n_components=0.9, checkpoint=ckpt, checkpoint_every=1, progress=False)
    whole = score(make_model(), make_batches(), n_components=0.9, progress=False)
    for name in whole:
        assert resumed[name].count == whole[name].count == 40
        rel = ((resumed[name].score - whole[name].score).abs() / whole[name].score).max().item()
        assert rel <= 1e-12
    assert not os.path.exists(ckpt)  # removed once the run finished


def _interrupted(tmp_path, n_batches=3):
    """A checkpoint left by a run that stopped after n_batches (simulated)."""
    ckpt = str(tmp_path / "c.ckpt")

    def stop_after():
        for i, b in enumerate(make_batches()):
            if i == n_batches:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        score(make_model(), stop_after(), checkpoint=ckpt, checkpoint_every=1, progress=False)
    assert os.path.exists(ckpt)
    return ckpt


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = _interrupted(tmp_path)
    with pytest.raises(ValueError, match="n_components"):
        score(make_model(), make_batches(), n_components=0.5, checkpoint=ckpt, progress=False)
    other = make_model()
    with torch.no_grad():
        other.a.weight[0, 0, 0, 0] += 1
    with pytest.raises(ValueError, match="weights"):
        score(other, make_batches(), checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="layers"):
        score(make_model(), make_batches(), layers=["a"], checkpoint=ckpt, progress=False)


def test_damaged_checkpoint_is_refused_not_half_loaded(tmp_path):
    ckpt = _interrupted(tmp_path)
    raw = open(ckpt, "rb").read()
    with open(ckpt, "wb") as f:
        f.write(raw[: len(raw) - 40])
    with pytest.raises(ValueError, match="cannot read"):
        score(make_model(), make_batches(), checkpoint=ckpt, progress=False)
    with open(ckpt, "wb") as f:
        f.write(b"\x00" * 64)
    with pytest.raises(ValueError):
        score(make_model(), make_batches(), checkpoint=ckpt, progress=False)


def test_bad_checkpoint_every():
    with pytest.raises(ValueError, match="checkpoint_every"):
        score(make_model(), make_batches(1), checkpoint="x", checkpoint_every=0, progress=False)

"""Distillation under several processes (DistributedDataParallel over gloo on
CPU, as torchrun would start it): the same weights as one process with the
same global batch, and exact resume of a killed multi-process run."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
from torch import nn

from ocnna_fast._util.distributed import shut_down
from ocnna_fast.recovery.distill import TensorImages, distill

WORLD = 2
GLOBAL_BATCH = 8
N_IMAGES = 21  # the last batch holds 5 images: 3 and 2, so the shares need their weights


def _net(bn: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        norm(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        norm(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )


def _data() -> TensorImages:
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (N_IMAGES, 3, 12, 12), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 4, (N_IMAGES,), generator=g)
    return TensorImages(x, y, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment=True)


def _train(bn: bool, checkpoint_dir=None, stop=None, epochs=2):
    student, teacher = _net(bn, 1), _net(bn, 2)
    history = distill(
        student,
        teacher,
        _data(),
        epochs=epochs,
        lr=0.05,
        batch_size=GLOBAL_BATCH,
        seed=3,
        checkpoint_dir=checkpoint_dir,
        progress=False,
        stop_after_epoch=stop,
    )
    return student, history


def _worker(rank: int, port: int, bn: bool, out: str, checkpoint_dir, stop) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    finished = False
    try:
        torch.set_num_threads(1)
        student, history = _train(bn, checkpoint_dir, stop)
        torch.save({"state": student.state_dict(), "history": history}, f"{out}.rank{rank}")
        finished = True
    finally:
        shut_down(finished)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp_path, name, bn, checkpoint_dir=None, stop=None):
    out = str(tmp_path / name)
    torch.multiprocessing.spawn(_worker, args=(_free_port(), bn, out, checkpoint_dir, stop), nprocs=WORLD)
    return [torch.load(f"{out}.rank{r}", weights_only=True) for r in range(WORLD)]


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    torch.set_num_threads(1)
    single, single_hist = _train(bn=False)
    ranks = _spawn(tmp_path, "ddp", bn=False)
    for r in ranks:  # every process ends with the same weights...
        for k, v in r["state"].items():
            assert torch.equal(v, ranks[0]["state"][k])
    # ...which are the single process's up to float rounding of the split sums
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][k], v, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(v, _net(False, 1).state_dict()[k]) for k, v in single.state_dict().items())
    for a, b in zip(ranks[0]["history"], single_hist):
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_a_killed_two_process_run_resumes_to_the_same_weights(tmp_path):
    straight = _spawn(tmp_path, "straight", bn=True, checkpoint_dir=str(tmp_path / "ck-a"))
    _spawn(tmp_path, "first", bn=True, checkpoint_dir=str(tmp_path / "ck-b"), stop=1)  # "killed" after epoch 1
    ck = torch.load(tmp_path / "ck-b" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["config"]["world_size"] == WORLD
    resumed = _spawn(tmp_path, "resumed", bn=True, checkpoint_dir=str(tmp_path / "ck-b"))
    for k, v in straight[0]["state"].items():
        assert torch.equal(resumed[0]["state"][k], v), k
    # one process cannot resume a two-process run (BatchNorm saw each share)
    with pytest.raises(ValueError, match="world_size"):
        _train(bn=True, checkpoint_dir=tmp_path / "ck-b")


def _statistics_and_accuracy(distributed=None):
    """A BatchNorm network re-estimated on 5 batches (the last short) and evaluated on 21 images."""
    from ocnna_fast.data.evaluation import evaluate
    from ocnna_fast.recovery.batchnorm import recalibrate_batchnorm

    model = _net(True, 4)
    g = torch.Generator().manual_seed(6)
    batches = [torch.randn(n, 3, 12, 12, generator=g) for n in (4, 4, 4, 4, 3)]
    seen = recalibrate_batchnorm(model, batches, distributed=distributed)
    stats = {k: v for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    data = _data()
    data.augment = False
    return seen, stats, evaluate(model, data, batch_size=8, distributed=distributed)


def _measure_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    finished = False
    try:
        torch.set_num_threads(1)
        shared, alone = _statistics_and_accuracy(), _statistics_and_accuracy(distributed=False)
        torch.save({"shared": shared, "alone": alone}, f"{out}.rank{rank}")
        finished = True
    finally:
        shut_down(finished)


def test_batchnorm_statistics_and_accuracy_under_two_processes_are_one_process_s(tmp_path):
    """Under a process group each process re-estimates on every other batch
    and evaluates its share of each batch; the statistics combined across
    them and the summed hits are one process's (to rounding)."""
    seen, stats, accuracy = _statistics_and_accuracy()
    out = str(tmp_path / "measure")
    torch.multiprocessing.spawn(_measure_worker, args=(_free_port(), out), nprocs=WORLD)
    for r in range(WORLD):
        got = torch.load(f"{out}.rank{r}", weights_only=False)
        s_seen, s_stats, s_accuracy = got["shared"]
        assert s_seen == seen == 19 and s_accuracy == accuracy
        for k, v in stats.items():
            torch.testing.assert_close(s_stats[k], v, rtol=1e-5, atol=1e-6, msg=k)
        # each process alone (distributed=False) is one process too: the same figures
        assert got["alone"][2] == accuracy
    assert 0 < accuracy < 100


@pytest.mark.parametrize("kind", ["tensor", "folder"])
def test_shards_interleave_to_the_whole_batch(tmp_path, kind):
    if kind == "tensor":
        data = _data()
    else:
        from helpers import MEAN, STD, write_folder

        from ocnna_fast.data.imagefolder import folder_split

        write_folder(tmp_path, per_class=(4, 1))
        data = folder_split(tmp_path, "train", 16, MEAN, STD, augment=True)

    def epoch(shard):
        return list(data.batches(GLOBAL_BATCH, shuffle=True, gen=torch.Generator().manual_seed(9), shard=shard))

    whole, parts = epoch(None), [epoch((r, WORLD)) for r in range(WORLD)]
    for i, (x, y) in enumerate(whole):
        for r in range(WORLD):
            assert torch.equal(parts[r][i][0], x[r::WORLD]) and torch.equal(parts[r][i][1], y[r::WORLD])


def test_uneven_last_batches_are_refused_under_several_processes(monkeypatch):
    d = sys.modules["ocnna_fast.recovery.distill"]  # the package attribute of that name is the function

    monkeypatch.setattr(d, "rank_and_world", lambda: (0, 3))
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        _train(bn=False)
    monkeypatch.setattr(d, "rank_and_world", lambda: (0, 2))
    with pytest.raises(ValueError, match="cannot be shared"):
        odd = _data()
        odd = TensorImages(odd.images[:17], odd.labels[:17], (0.5,) * 3, (0.25,) * 3)  # 17 % 8 = 1 image left
        distill(_net(False, 1), None, odd, epochs=1, lr=0.1, batch_size=8, progress=False)


PLAIN_FACTORY = """
import torch
from torch import nn

def plain():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
"""


def test_prune_under_torchrun_matches_one_process_and_only_rank_0_writes(tmp_path):
    """``torchrun --nproc-per-node 2 -m ocnna_fast.cli prune``: the pruned
    weights equal a one-process run's (a BatchNorm-free user model) within
    float tolerance, and one set of outputs is written."""
    import json
    import subprocess
    import sys as _sys

    from helpers import write_folder
    from safetensors.torch import load_file

    write_folder(tmp_path / "imnet", per_class=(6, 3))  # 18 training images: global batches 4+4+4+4+2
    (tmp_path / "ddp_user_nets.py").write_text(PLAIN_FACTORY)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    args = [
        "prune",
        "--model",
        "ddp_user_nets:plain",
        "--dataset",
        "imagenet",
        "--data-dir",
        str(tmp_path / "imnet"),
        "--input-size",
        "16",
        "--workers",
        "0",
        "--batch-size",
        "4",
        "--k",
        "50",
        "--score-images",
        "9",
        "--finetune-epochs",
        "1",
        "--lr",
        "0.05",
        "--latency-repeats",
        "0",
        "--no-progress",
    ]
    runs = {}
    for name, launcher in (
        ("one", [_sys.executable, "-m", "ocnna_fast.cli"]),
        (
            "two",
            [
                _sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
                "-m",
                "ocnna_fast.cli",
            ],
        ),
    ):
        out = tmp_path / name
        done = subprocess.run(
            [*launcher, *args, "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = (
            load_file(str(out / "pruned" / "model.safetensors")),
            json.loads((out / "report.json").read_text()),
            done.stdout,
        )
        assert not list(out.glob(".staging-*"))  # no rank left its staging folder behind
    (one, rep1, _), (two, rep2, stdout2) = runs["one"], runs["two"]
    assert "2 processes" in stdout2 and stdout2.count("wrote ") == 1  # rank 1 printed nothing
    assert rep1["pruned_params"] == rep2["pruned_params"]
    assert rep1["recalibration"] == "folded-refit"  # no BatchNorm: moments restored, layers refitted
    for k, v in one.items():
        torch.testing.assert_close(two[k], v, rtol=1e-5, atol=1e-6)
    assert len(rep1["distill_history"]) == 1
    assert rep1["distill_history"][0]["train_accuracy"] == pytest.approx(rep2["distill_history"][0]["train_accuracy"])


def test_a_budget_under_torchrun_shares_out_the_search_and_ends_like_one_process(tmp_path, data_dir):
    """``torchrun --nproc-per-node 2 ... prune --target``: the same widths,
    caps, moves and accuracy after BatchNorm as one process, each process
    having measured about half of the candidates (the curves and caps split
    in two; the local search's moves drawn two at a time, one measured by
    each process, the first that improves kept as one process keeps it)."""
    import json
    import subprocess
    import sys as _sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["prune", "--arch", "resnet20", "--target", "macs=0.5", "--criterion", "l1", "--data-dir", str(data_dir)]
    args += ["--score-images", "32", "--bn-images", "32", "--eval-images", "64", "--sensitivity-images", "32"]
    args += ["--refine-steps", "16", "--batch-size", "16", "--finetune-epochs", "0", "--latency-repeats", "0"]
    args += ["--no-progress"]
    launchers = {
        "one": [_sys.executable, "-m", "ocnna_fast.cli"],
        "two": [_sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + ["-m", "ocnna_fast.cli"],
    }
    reports = {}
    for name, launcher in launchers.items():
        out = tmp_path / name
        done = subprocess.run(
            [*launcher, *args, "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        reports[name] = json.loads((out / "report.json").read_text())
    one, two = reports["one"], reports["two"]
    assert one["widths"] == two["widths"]
    assert one["pruned_accuracy_before_finetune"] == two["pruned_accuracy_before_finetune"]
    s1, s2 = one["sensitivity"], two["sensitivity"]
    assert s1["search"] == s2["search"] and s1["caps"] == s2["caps"]
    shares = s2["evaluations_per_process"]
    assert len(shares) == 2 and s1["evaluations_per_process"] is None
    total = s1["evaluations"]  # one process: the offset, the curves, the caps and the moves
    # a curve stops at its first zero from the top, so the groups' curves differ in length and their
    # share between processes is even only up to the points the stops skipped
    skipped = sum(max((i for i, v in enumerate(c) if i and v == 0.0), default=1) - 1 for c in s1["losses"].values())
    for n in shares:  # about half each; a round whose first move is kept wastes its second
        assert n <= total / 2 + s1["search"]["kept"] + 2 + skipped / 2, (shares, total, skipped)
    print("measured per process:", shares, "of", total, "candidates one process measured")


def test_distributed_true_without_a_process_group_is_refused():
    """Asked to share the work out with no process group to share it with:
    refused in one line by evaluation, BatchNorm re-estimation and scoring
    alike (it used to run alone in the first two)."""
    from ocnna_fast import score
    from ocnna_fast.data.evaluation import evaluate
    from ocnna_fast.recovery.batchnorm import recalibrate_batchnorm

    model, augmented = _net(True, 0), _data()
    data = TensorImages(augmented.images, augmented.labels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    batches = [torch.randn(4, 3, 12, 12) for _ in range(2)]
    for call in (
        lambda: evaluate(model, data, batch_size=8, distributed=True),
        lambda: recalibrate_batchnorm(model, batches, distributed=True),
        lambda: score(model, batches, distributed=True, progress=False),
    ):
        with pytest.raises(ValueError, match="no torch.distributed process group"):
            call()
    assert 0.0 <= evaluate(model, data, batch_size=8, distributed=None) <= 100.0  # alone unless told otherwise

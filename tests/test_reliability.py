"""Bad input, damaged files and interruptions: never a silent wrong result,
never lost work (docs/reliability.md lists which test pins which promise)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from ocnna_fast import FilterStats, Scores, score
from ocnna_fast.recovery.distill import TensorImages, distill, distillation_loss
from ocnna_fast.scoring.scores import LayerScores
from ocnna_fast.selection.rules import group_scores, select_channels


def acts(n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, c, 7, 9, generator=g, dtype=torch.float64))


# ---- 1. every loader validates everything before changing anything -----------------


def _bad_states(sd):
    """(what, mutated state) pairs that must all be refused."""

    def with_(**kw):
        d = dict(sd)
        d.update(kw)
        return d

    mean_nan = sd["mean"].clone()
    mean_nan[1] = float("nan")
    neg = sd["count"].clone()
    neg[0] = -1
    m2_neg = sd["m2"].clone()
    m2_neg[2] = -0.5
    off = sd["count"].clone()
    off[3] += 1
    extra = dict(sd)
    extra["junk"] = 1
    missing = {k: v for k, v in sd.items() if k != "m2"}
    return [
        ("nan mean", with_(mean=mean_nan)),
        ("negative count", with_(count=neg)),
        ("negative m2", with_(m2=m2_neg)),
        ("counts disagree", with_(count=off)),
        ("images disagree", with_(images=sd["images"] + 1)),
        ("negative images", with_(images=-1)),
        ("2-D mean", with_(mean=sd["mean"][None])),
        ("integer mean", with_(mean=sd["mean"].long())),
        ("n_components abc", with_(n_components="abc")),
        ("float images", with_(images=6.0)),
        ("unknown key", extra),
        ("missing key", missing),
        ("bool version", with_(version=True)),
    ]


def test_filter_stats_state_refuses_every_bad_field():
    st = FilterStats(5, 0.9).update(acts())
    sd = st.state_dict()
    target = FilterStats(5, 0.9).update(acts(seed=3))
    before = target.state_dict()
    for what, bad in _bad_states(sd):
        with pytest.raises(ValueError):
            target.load_state_dict(bad)
        after = target.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in ("count", "mean", "m2")), what
        assert after["images"] == before["images"], what
    target.load_state_dict(sd)  # the valid one still loads
    assert torch.equal(target.result().score, st.result().score)


def _scores(seed=0):
    st = FilterStats(5, 0.9, name="a").update(acts(seed=seed))
    st2 = FilterStats(5, 0.9, name="b").update(acts(seed=seed + 1))
    return Scores({"a": st.result(), "b": st2.result()}, n_components=0.9)


def _rewrite(path, tensors, meta):
    """Tampering that also recomputes the digest: only value checks can catch it."""
    from safetensors.torch import save_file

    from ocnna_fast._util import validate

    meta = {k: v for k, v in meta.items() if k != "sha256"}
    meta["sha256"] = validate.tensors_sha256(tensors, list(meta.items()))
    save_file(tensors, str(path), metadata=meta)


def _read(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def test_scores_file_refuses_tampered_values(tmp_path):
    p = tmp_path / "s.safetensors"
    _scores().save(p)
    tensors, meta = _read(p)
    cases = []
    t = dict(tensors)
    t["0.mean"] = t["0.mean"].clone()
    t["0.mean"][0] = float("nan")
    cases.append((t, meta))
    t = dict(tensors)
    t["1.score"] = t["1.score"].clone()[None]
    cases.append((t, meta))
    t = dict(tensors)
    t["0.score"] = t["0.score"].long()
    cases.append((t, meta))
    t = dict(tensors)
    t["0.dead"] = torch.ones(7, dtype=torch.uint8)
    cases.append((t, meta))
    t = dict(tensors)
    t["0.std"] = -t["0.std"]
    cases.append((t, meta))
    cases.append((tensors, dict(meta, counts="[]")))
    cases.append((tensors, dict(meta, counts="[6, -1]")))
    cases.append((tensors, dict(meta, layers='["a", "a"]')))
    cases.append((tensors, dict(meta, n_components='"abc"')))
    cases.append((tensors, dict(meta, tap="elsewhere")))
    cases.append(({k: v for k, v in tensors.items() if not k.startswith("1.")}, meta))
    for i, (t, m) in enumerate(cases):
        q = tmp_path / f"bad{i}.safetensors"
        _rewrite(q, t, m)
        with pytest.raises(ValueError):
            Scores.load(q)
    # a damaged byte (digest left as saved) is caught by the digest
    raw = bytearray(p.read_bytes())
    raw[-3] ^= 0x10
    (tmp_path / "flip.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError):
        Scores.load(tmp_path / "flip.safetensors")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.b(torch.relu(self.bn(self.a(x)))).mean((2, 3)))


def _batches(n=4, size=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 8, 8, generator=g) for _ in range(n)]


def _interrupted(batches, after):
    def gen():
        for i, b in enumerate(batches):
            if i == after:
                raise KeyboardInterrupt
            yield b

    return gen()


def test_checkpoint_refuses_tampered_values(tmp_path):
    torch.manual_seed(0)
    model = Tiny().eval()
    ck = str(tmp_path / "run.ckpt")
    with pytest.raises(KeyboardInterrupt):
        score(model, _interrupted(_batches(), 2), checkpoint=ck, checkpoint_every=1, progress=False)
    tensors, meta = _read(ck)
    bad = []
    t = dict(tensors)
    t["0.mean"] = t["0.mean"].clone()
    t["0.mean"][1] = float("nan")
    bad.append((t, meta))
    t = dict(tensors)
    t["1.m2"] = -t["1.m2"]
    bad.append((t, meta))
    t = dict(tensors)
    t["0.images"] = torch.tensor([99])
    bad.append((t, meta))
    t = dict(tensors)
    t["0.count"] = t["0.count"] + 1
    bad.append((t, meta))
    bad.append((tensors, dict(meta, batches="-1")))
    bad.append((tensors, dict(meta, images="abc")))
    for t, m in bad:
        _rewrite(ck, t, m)
        with pytest.raises(ValueError):
            score(model, _batches(), checkpoint=ck, checkpoint_every=1, progress=False)
    raw = bytearray(open(ck, "rb").read())
    raw[-2] ^= 0x01
    open(ck, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match="damaged"):
        score(model, _batches(), checkpoint=ck, checkpoint_every=1, progress=False)


# ---- fuzz: mutate valid files; either a ValueError or the original values ----------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 10**9), flip=st.integers(1, 255), truncate=st.booleans())
def test_fuzz_scores_and_checkpoint_files(tmp_path_factory, pos, flip, truncate):
    d = tmp_path_factory.mktemp("fuzz")
    p = d / "s.safetensors"
    original = _scores()
    original.save(p)
    raw = bytearray(p.read_bytes())
    if truncate:
        raw = raw[: pos % len(raw)]
    else:
        raw[pos % len(raw)] ^= flip
    p.write_bytes(bytes(raw))
    try:
        got = Scores.load(p)
    except ValueError:
        return
    assert list(got) == list(original)
    for name in original:
        for f in ("score", "mean", "std", "dead"):
            assert torch.equal(getattr(got[name], f), getattr(original[name], f)), (name, f)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 10**9), flip=st.integers(1, 255))
def test_fuzz_checkpoint_file(tmp_path_factory, pos, flip):
    d = tmp_path_factory.mktemp("fuzzck")
    torch.manual_seed(0)
    model = Tiny().eval()
    ck = str(d / "run.ckpt")
    with pytest.raises(KeyboardInterrupt):
        score(model, _interrupted(_batches(), 2), checkpoint=ck, checkpoint_every=1, progress=False)
    raw = bytearray(open(ck, "rb").read())
    raw[pos % len(raw)] ^= flip
    open(ck, "wb").write(bytes(raw))
    full = score(model, _batches(), progress=False)
    try:
        got = score(model, _batches(), checkpoint=ck, checkpoint_every=1, progress=False)
    except ValueError:
        return
    for name in full:  # resumed from an intact-reading checkpoint: the uninterrupted result
        assert torch.allclose(got[name].score, full[name].score, rtol=1e-12, atol=0)


@settings(max_examples=80, deadline=None)
@given(
    key=st.sampled_from(["count", "mean", "m2", "images", "n_components", "num_channels", "version"]),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-5, 50),
        st.text(max_size=3),
        st.none(),
        st.lists(st.floats(-1e3, 1e3), min_size=0, max_size=6),
    ),
)
def test_fuzz_state_dict(key, value):
    src = FilterStats(5, 0.9).update(acts())
    sd = src.state_dict()
    target = FilterStats(5, 0.9)
    bad = dict(sd)
    bad[key] = torch.tensor(value, dtype=torch.float64) if isinstance(value, list) else value
    try:
        target.load_state_dict(bad)
    except ValueError:
        assert target.images == 0 and float(target._count.sum()) == 0.0  # untouched
        return
    res = target.state_dict()
    for k in ("count", "mean", "m2"):
        assert bool(torch.isfinite(res[k]).all())
    r = target.result() if target.images else None
    assert r is None or bool(torch.isfinite(r.score).all())


# ---- 2. a NaN score never wipes out a layer ------------------------------------------


def test_non_finite_scores_are_refused_with_the_layer_name():
    s = np.array([0.3, 0.1, float("nan"), 0.5, 0.2, 0.4, 0.9, 0.6])
    with pytest.raises(ValueError, match="'layer1.conv'.*non-finite.*\\[2\\]"):
        select_channels(s, 0, name="layer1.conv")
    assert select_channels(np.nan_to_num(s), 0).size == 8  # k=0 keeps all


# ---- 3. an empty batch does not shift the resume position ----------------------------


def test_resume_with_an_empty_batch_counts_every_image_once(tmp_path):
    torch.manual_seed(0)
    model = Tiny().eval()
    data = _batches(4)
    data.insert(1, torch.empty(0, 3, 8, 8))
    full = score(model, data, progress=False)
    ck = str(tmp_path / "run.ckpt")
    with pytest.raises(KeyboardInterrupt):
        score(model, _interrupted(data, 3), checkpoint=ck, checkpoint_every=1, progress=False)
    resumed = score(model, data, checkpoint=ck, checkpoint_every=1, progress=False)
    for name in full:
        assert resumed[name].count == full[name].count == 12
        assert torch.allclose(resumed[name].score, full[name].score, rtol=1e-12, atol=0)


# ---- 4. FilterStats.update from several threads ---------------------------------------


def test_concurrent_updates_lose_nothing():
    st_ = FilterStats(64, 0.9)
    x = torch.relu(torch.randn(16, 64, 14, 14))
    n_threads, per = 4, 6

    def work():
        for _ in range(per):
            st_.update(x)

    ts = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert st_.images == n_threads * per * 16
    assert bool((st_.state_dict()["count"] == n_threads * per * 16).all())


# ---- 5. a distillation checkpoint belongs to one run ---------------------------------


class Small(nn.Module):
    def __init__(self, width=6):
        super().__init__()
        self.c = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (32, 3, 8, 8), generator=g, dtype=torch.uint8)
    return TensorImages(x, (x[:, 0].float().mean((1, 2)) > 127).long(), (0.5,) * 3, (0.25,) * 3)


def test_distill_checkpoint_of_another_student_teacher_or_data_is_refused(tmp_path):
    torch.manual_seed(0)
    teacher, student = Small(), Small(4)
    init = {k: v.clone() for k, v in student.state_dict().items()}
    distill(student, teacher, _data(), epochs=1, lr=0.05, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="student_sha256"):  # same shapes, other kept weights
        distill(Small(4), teacher, _data(), epochs=1, lr=0.05, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    fresh = Small(4)
    fresh.load_state_dict(init)
    with pytest.raises(ValueError, match="data_sha256"):
        distill(fresh, teacher, _data(seed=1), epochs=1, lr=0.05, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="teacher_sha256"):
        distill(fresh, Small(), _data(), epochs=1, lr=0.05, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    distill(fresh, teacher, _data(), epochs=1, lr=0.05, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in fresh.state_dict().items())


# ---- 6, 7. modules come back in their own modes ---------------------------------------


def test_score_restores_every_submodules_flag():
    model = Tiny().train()
    model.bn.eval()  # frozen BatchNorm inside a training model
    score(model, _batches(2), progress=False)
    assert model.training and not model.bn.training and model.a.training


def test_prune_leaves_the_callers_model_in_its_mode():
    from ocnna_fast import prune

    model = Tiny().train()
    model.bn.eval()
    s = score(model, _batches(2), progress=False)
    prune(model, s, 40, torch.zeros(1, 3, 8, 8))
    assert model.training and not model.bn.training


# ---- 8. finishing never depends on cleanup --------------------------------------------


def test_result_survives_a_checkpoint_that_cannot_be_removed(tmp_path, monkeypatch):
    model = Tiny().eval()
    ck = str(tmp_path / "run.ckpt")
    real_remove = os.remove

    def refuse(path, *a, **k):
        if str(path) == ck:
            raise PermissionError("read-only folder")
        return real_remove(path, *a, **k)

    monkeypatch.setattr(os, "remove", refuse)
    with pytest.warns(UserWarning, match="could not be removed"):
        s = score(model, _batches(), checkpoint=ck, checkpoint_every=1, progress=False)
    assert s["a"].count == 12


# ---- 9. atomic writes leave nothing behind ---------------------------------------------


def test_saving_onto_a_folder_fails_cleanly(tmp_path):
    target = tmp_path / "scores"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        _scores().save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores"] and not any(target.iterdir())


def test_a_failed_write_removes_its_temporary_file(tmp_path):
    from ocnna_fast._util.atomic import atomic_path

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "f.bin") as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def _scores_file(path):
    _scores().save(path)


def _checkpoint_file(path):
    from ocnna_fast.scoring.runstate import save_checkpoint

    save_checkpoint(path, {"a": FilterStats(5, 0.9, name="a").update(acts())}, {"model": "m"}, batches=1, images=4)


@pytest.mark.parametrize("write", [_scores_file, _checkpoint_file])
def test_the_same_content_is_written_as_the_same_bytes(tmp_path, write):
    """The safetensors writer ordered the metadata keys differently on each
    call, so the same scores made files of different sha256 (not comparable
    by hash, and a results row sealed on them changed from run to run)."""
    files = []
    for i in range(4):
        write(tmp_path / f"{i}")
        files.append((tmp_path / f"{i}").read_bytes())
    assert len(set(files)) == 1


# ---- 11. plan.json names its weights ---------------------------------------------------


def test_swapped_weights_of_the_same_shapes_are_refused(tmp_path):
    from ocnna_fast import load_pruned, prune, save_pruned

    torch.manual_seed(0)
    model = Tiny().eval()
    s = score(model, _batches(2), progress=False)
    p1, plan = prune(model, s, 40, torch.zeros(1, 3, 8, 8))
    p2 = Tiny().eval()
    p2 = prune(p2, s, 40, torch.zeros(1, 3, 8, 8))[0]  # same structure, other weights
    save_pruned(tmp_path / "one", p1, plan)
    save_pruned(tmp_path / "two", p2, plan)
    (tmp_path / "one" / "model.safetensors").write_bytes((tmp_path / "two" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="sha256"):
        load_pruned(tmp_path / "one", Tiny())


# ---- 13. messages that say what happened ------------------------------------------------


def test_plan_of_another_architecture_names_the_layers():
    from ocnna_fast import apply_plan, prune

    model = Tiny().eval()
    _, plan = prune(model, score(model, _batches(2), progress=False), 40, torch.zeros(1, 3, 8, 8))

    class Other(Tiny):
        def __init__(self):
            super().__init__()
            self.extra = nn.Conv2d(6, 6, 1)

    with pytest.raises(ValueError, match="only in the model: \\['extra'\\]"):
        apply_plan(Other().eval(), plan)


# ---- 14. rules pinned against values computed by hand --------------------------------


def test_coupled_group_rule_normalises_each_layer_by_its_mean():
    """docs/scoring.md §4: scores of coupled layers are divided by their layer's mean
    before averaging.  Layer A scores ~100x layer B: without the division,
    A alone would decide the ranking."""

    def ls(v):
        v = torch.tensor(v, dtype=torch.float64)
        return LayerScores(
            score=v, mean=torch.ones_like(v), std=v.clone(), count=1, dead=torch.zeros(4, dtype=torch.bool)
        )

    a = ls([100.0, 300.0, 200.0, 400.0])  # mean 250
    b = ls([4.0, 1.0, 2.0, 1.0])  # mean 2
    got = group_scores([(a, [0, 1, 2, 3]), (b, [0, 1, 2, 3])], criterion="ocnna")
    want = np.array([(0.4 + 2.0) / 2, (1.2 + 0.5) / 2, (0.8 + 1.0) / 2, (1.6 + 0.5) / 2])
    np.testing.assert_allclose(got, want, rtol=1e-15)
    assert select_channels(got, 50).tolist() == [0, 3]  # by A alone it would be [1, 3]


def test_distillation_loss_has_the_t_squared_factor():
    """Hinton et al.: alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE,
    on fixed logits, against the sums written out by hand."""
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, -2.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    T, alpha = 4.0, 0.7

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    kl = 0.0
    ce = 0.0
    for i in range(2):
        p, q = softmax(t[i].numpy() / T), softmax(s[i].numpy() / T)
        kl += float(np.sum(p * (np.log(p) - np.log(q))))
        ce += -float(np.log(softmax(s[i].numpy())[y[i]]))
    want = alpha * T * T * kl / 2 + (1 - alpha) * ce / 2
    got = float(distillation_loss(s, t, y, T, alpha))
    assert got == pytest.approx(want, rel=1e-12)


# ---- mutation-pass survivors worth killing (docs/reliability.md) ----------------------


def test_the_teacher_changes_the_training():
    """With a teacher and alpha > 0 the soft loss is used: the weights differ
    from plain fine-tuning with the same seed, data and start."""
    torch.manual_seed(0)
    teacher, init = Small(), Small(4).state_dict()
    runs = []
    for alpha in (0.9, 0.0):
        student = Small(4)
        student.load_state_dict(init)
        distill(student, teacher, _data(), epochs=1, lr=0.05, batch_size=8, alpha=alpha, progress=False)
        runs.append(student.state_dict())
    assert any(not torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_stop_after_epoch_stops_there_and_bad_settings_are_refused(tmp_path):
    hist = distill(
        Small(4),
        Small(),
        _data(),
        epochs=3,
        lr=0.05,
        batch_size=8,
        checkpoint_dir=tmp_path,
        stop_after_epoch=1,
        progress=False,
    )
    assert [h["epoch"] for h in hist] == [1]
    assert distill(Small(4), Small(), _data(), epochs=0, lr=0.05, progress=False) == []
    with pytest.raises(ValueError, match="temperature"):
        distill(Small(4), Small(), _data(), epochs=1, lr=0.05, temperature=0.0, progress=False)


def test_malformed_plan_groups_are_refused():
    from ocnna_fast import apply_plan, prune

    model = Tiny().eval()
    _, plan = prune(model, score(model, _batches(2), progress=False), 40, torch.zeros(1, 3, 8, 8))
    g = plan["groups"][0]
    bad_groups = [
        dict(g, root=3),
        dict(g, channels="4"),
        dict(g, removed=[g["channels"]]),
        dict(g, removed=list(range(g["channels"]))),
        dict(g, removed=["0"]),
    ]
    for bad in bad_groups:
        with pytest.raises(ValueError, match="malformed"):
            apply_plan(Tiny().eval(), dict(plan, groups=[bad] + plan["groups"][1:]))


def test_checkpoint_image_counts_are_checked_and_an_idle_layer_resumes(tmp_path):
    class Idle(Tiny):  # a conv that never runs: its layer has 0 images in every checkpoint
        def __init__(self):
            super().__init__()
            self.unused = nn.Conv2d(3, 2, 1)

    torch.manual_seed(0)
    model = Idle().eval()
    ck = str(tmp_path / "run.ckpt")
    with pytest.warns(UserWarning, match="never ran"):
        full = score(model, _batches(), progress=False)
    with pytest.raises(KeyboardInterrupt):
        score(model, _interrupted(_batches(), 2), checkpoint=ck, checkpoint_every=1, progress=False)
    good = open(ck, "rb").read()
    with pytest.warns(UserWarning, match="never ran"):
        resumed = score(model, _batches(), checkpoint=ck, checkpoint_every=1, progress=False)
    assert all(torch.allclose(resumed[n].score, full[n].score, rtol=1e-12, atol=0) for n in full)
    tensors, meta = None, None
    open(ck, "wb").write(good)
    tensors, meta = _read(ck)
    for bad in (torch.tensor([3.0]), torch.tensor([3, 3]), torch.tensor([-1])):
        t = dict(tensors)
        t["0.images"] = bad
        _rewrite(ck, t, meta)
        with pytest.raises(ValueError, match="image count"):
            score(model, _batches(), checkpoint=ck, checkpoint_every=1, progress=False)

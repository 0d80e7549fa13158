"""The loss of a width-search candidate: the model with some groups' lowest
channels masked, after BatchNorm re-estimation on calibration images, as the
KL divergence of its predictions on evaluation images from the base
model's.

Masking a channel at every layer that outputs it (each conv and BatchNorm of
the group) is what removing it does to the rest of the network: its
consumers read zeros.  So a candidate needs no surgery, only passes, and the
passes start at the candidate's first masked layer (``segments``): what runs
before it is the same for every candidate and is kept.  ``passes`` counts
what the search ran, in forward-pass equivalents over the calibration
images.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._util.module_state import restore_training_flags, training_flags
from .._util.placement import model_device, placement, to_device
from ..recovery.batchnorm import recalibrate_batchnorm
from ..recovery.foldedbn import output_moments, unfold
from .allocation import GroupInfo
from .lossmemo import LossMemo, fingerprint
from .masking import Masks, expand, lowest_first, mean_kl
from .segments import Cache, Segments, batch_size, first_images

__all__ = ["MaskedEvaluator", "CACHE_BYTES"]

# the most memory the activations kept at a cut may take; beyond it a
# candidate runs from the input (a 224-pixel network's early layers, with
# a thousand images, are about a gigabyte)
CACHE_BYTES = 2 << 30


class MaskedEvaluator:
    """The loss of ``model`` with channels of several groups masked at once,
    after BatchNorm re-estimation on ``calibration``: the KL divergence of its
    predictions on ``evaluation`` from the base model's, less what the
    re-estimation alone moves them (re-estimating on other images shifts the
    predictions by itself, as from lossless to JPEG images; that offset is
    every candidate's).

    ``cut``: run each candidate from its first masked layer (``segments``;
    the losses are those of whole passes, to rounding).  ``memo``: a JSON
    file that keeps every measured loss, written after each candidate, so a
    search that was stopped replays what it had measured and goes on where it
    stopped (the search is seeded: it asks for the same candidates in the
    same order).  The file names what the losses depend on (the weights, the
    channel order in every group, the images); a file from another model,
    ranking or image set is not used, and is replaced; ``write_memo=False``
    reads it only (under torchrun, rank 0 alone writes).  ``reference``: the
    unpruned model's log-probabilities on ``evaluation`` when the caller
    has them (as another evaluator over more of the same images does), so
    they are not computed again.  ``device``: where the candidates run
    (default: where ``model`` is; elsewhere, on a copy)."""

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[Tuple[GroupInfo, List[Tuple[str, List[int]]]]],
        calibration: Optional[Sequence[torch.Tensor]],
        evaluation: Sequence[torch.Tensor],
        memo: Optional[Union[str, os.PathLike]] = None,
        cut: bool = True,
        write_memo: bool = True,
        reference: Optional[Sequence[torch.Tensor]] = None,
        device: Union[None, str, torch.device] = None,
    ) -> None:
        home, run = placement(model, device)
        if run != home:  # measured on a copy where it runs; the caller's model stays where it is
            model = copy.deepcopy(model).to(run)
        self.work = copy.deepcopy(model).eval()
        self.groups = {info.root: (info, outputs, lowest_first(info)) for info, outputs in groups}
        orders = json.dumps([(r, o, order) for r, (_, o, order) in sorted(self.groups.items())], default=int)
        widths = {root: info.width for root, (info, _, _) in self.groups.items()}
        self.memo = LossMemo(memo, fingerprint(model, orders, calibration, evaluation), widths, write=write_memo)
        self.reused = 0
        device = model_device(model)  # the images are moved once, to where the model runs
        calibration = None if calibration is None else [to_device(x, device) for x in calibration]
        evaluation = [to_device(x, device) for x in evaluation]
        if calibration is None:  # one pass: each candidate's statistics from the evaluated images themselves
            evaluation = [torch.cat(list(evaluation))]
        else:
            calibration = [x.contiguous(memory_format=torch.channels_last) for x in calibration]
        evaluation = [x.contiguous(memory_format=torch.channels_last) for x in evaluation]
        self.calibration, self.evaluation = calibration, evaluation
        # the unit of ``passes``: one forward of the whole network over the calibration images
        self.unit = sum(x.shape[0] for x in (calibration if calibration is not None else evaluation))
        if not _norms(self.work):
            # folded BatchNorm: put it back (the base model's output moments), so a
            # candidate is re-estimated as on an unfolded network; masks by name
            # then land after the norm, as removal would leave zeros there
            convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            unfold(self.work, output_moments(model, calibration if calibration is not None else evaluation, convs))
        self.norms = _norms(self.work)
        self.work.to(memory_format=torch.channels_last)  # ~15% faster convs on CPU
        self.passes = 0.0
        self.reference = self._reference(model, evaluation, reference)
        masked = {name for _, outputs, _ in self.groups.values() for name, _ in outputs}
        self.segments = Segments.build(self.work, masked, evaluation[0][:1]) if cut else None
        self.cache: Optional[Cache] = None
        self.masks = Masks(self.work)
        self.evaluations = 0  # candidates measured on every image
        self.evaluations_per_process: Optional[List[int]] = None  # under torchrun, each process's share
        self.screenings = 0  # and on a share of them
        # one-pass: the allocation later candidates differ from in a few groups, and its kept activations by cut
        self.anchored: Optional[Dict[str, int]] = None
        self.anchor_caches: Dict[int, Cache] = {}
        self.offset = 0.0
        self.offset = self.loss({})
        self.base_statistics: Optional[List[Dict[str, torch.Tensor]]] = None  # measured with the first cut

    def _reference(self, model: nn.Module, evaluation, given) -> List[torch.Tensor]:
        """The unpruned model's log-probabilities, the losses' reference:
        ``given``, checked, or computed (one pass of ``evaluation``, counted)."""
        if given is not None:
            if [r.shape[0] for r in given] != [x.shape[0] for x in evaluation]:
                raise ValueError("reference= needs one row of log-probabilities per evaluation image, batched alike")
            return list(given)
        flags = training_flags(model)  # the caller's model leaves as it came
        try:
            with torch.no_grad():
                out = [F.log_softmax(model.eval()(x), 1) for x in evaluation]
        finally:
            restore_training_flags(flags)
        self.passes += self._images(evaluation) / self.unit
        return out

    def _unmasked_statistics(self) -> List[Dict[str, torch.Tensor]]:
        """The BatchNorm statistics of the unmasked network re-estimated on
        the calibration images: those the layers before a cut run with.
        Measured here, not taken from the offset's measurement, which a memo
        may have served without running it."""
        if self.segments is not None and self.norms and self.calibration is not None:
            self._recalibrate(0, self._input_cache().calibration)
        return [copy.deepcopy(m.state_dict()) for m in self.norms]

    @property
    def has_bn(self) -> bool:
        """Whether candidates are re-estimated (BatchNorm present, or put back on a folded model)."""
        return bool(self.norms)

    def loss(self, removed: Dict[str, int]) -> float:
        """The loss with ``removed[root]`` of each group's lowest-valued channels masked."""
        key = json.dumps(sorted((root, int(n)) for root, n in removed.items() if n > 0))
        kl = self.memo.get(key)
        if kl is not None:
            self.reused += 1
        else:
            kl = self._measure(removed, 1.0)
            self.memo.put(key, kl)
        return max(0.0, kl - self.offset)

    def screened(self, removed: Dict[str, int], share: float) -> float:
        """The KL divergence with ``removed`` masked, measured on the first
        ``share`` of the calibration and evaluation images only: a cheap
        first look, comparable between candidates screened alike."""
        key = json.dumps(sorted((root, int(n)) for root, n in removed.items() if n > 0))
        kl = self.memo.get_screened(share, key)
        if kl is None:
            kl = self._measure(removed, share)
            self.memo.put_screened(share, key, kl)
        return kl

    def release(self) -> None:
        """Frees the kept activations (the search's later candidates mask groups from the first on)."""
        self.cache = None
        self.anchor(None)

    @property
    def one_pass(self) -> bool:
        """Whether each candidate is normalised by its own evaluation images' statistics (no calibration pass)."""
        return self.calibration is None

    def anchor(self, removed: Optional[Dict[str, int]]) -> None:
        """The allocation later candidates differ from in a few groups (the
        local search's current one; ``None``: none).  In one-pass
        measurement a candidate then runs from the first layer where it
        differs from it, from this allocation's activations kept there
        (exact: the layers before it compute the same values for both).
        Kept activations before the first layer where the new anchor
        differs from the old one stay."""
        new = None if removed is None else {r: int(n) for r, n in removed.items() if n > 0}
        if new is None or self.anchored is None:
            self.anchor_caches = {}
        else:
            valid = self._differ(new, self.anchored)
            self.anchor_caches = {c: v for c, v in self.anchor_caches.items() if c <= valid}
        self.anchored = new if self.one_pass and self.segments is not None else None

    def _differ(self, a: Dict[str, int], b: Dict[str, int]) -> int:
        """The cut before the first layer the allocations ``a`` and ``b`` mask differently (past the end: none)."""
        changed = [r for r in set(a) | set(b) if a.get(r, 0) != b.get(r, 0)]
        names = [name for r in changed for name, _ in self.groups[r][1]]
        return self.segments.entry(names) if names else len(self.segments.nodes)

    def masks_of(self, removed: Dict[str, int]) -> Dict[str, List[int]]:
        masks: Dict[str, List[int]] = {}
        for root, n in removed.items():
            info, outputs, order = self.groups[root]
            positions = expand(order[: n // info.blocks], info)
            for name, chans in outputs:
                masks.setdefault(name, []).extend(chans[p] for p in positions)
        return {name: chans for name, chans in masks.items() if chans}

    def _measure(self, removed: Dict[str, int], share: float) -> float:
        """The KL divergence from the base model's predictions, ``removed``
        masked, on the first ``share`` of the images."""
        masks = self.masks_of(removed)
        # a screen runs from the input: its BatchNorm statistics all come from
        # its share of the calibration images (the kept activations were
        # normalised with statistics of all of them); the local search's
        # candidates mask groups from the first on, so it costs little
        staged = self.segments is not None and masks and share >= 1.0
        cut = self.segments.entry(masks) if staged else 0
        differ = (
            self._differ({r: n for r, n in removed.items() if n > 0}, self.anchored)
            if staged and self.anchored is not None
            else 0
        )
        if cut < differ < len(self.segments.nodes):
            cache = self._anchor_cache(differ)  # the anchor's activations reach deeper than the unmasked ones
        else:
            cache = self._cache_for(cut)
        self.masks.set(masks)
        try:
            calibration, evaluation, reference = self._head(cache, share)
            start = cache.cut
            if self.norms and calibration is not None:
                self._recalibrate(start, calibration)
            elif self.norms:  # normalised by the statistics of the very batch evaluated: BatchNorm in training mode
                for m in self.norms:
                    m.train()
            if share >= 1.0:
                self.evaluations += 1
            else:
                self.screenings += 1
            self.passes += self._share(start) * self._images(evaluation) / self.unit
            return self._kl(start, evaluation, reference)
        finally:
            self.masks.clear()
            for m in self.norms:
                m.eval()

    def _share(self, cut: int) -> float:
        return self.segments.share(cut) if self.segments is not None else 1.0

    def _cache_for(self, cut: int) -> Cache:
        """The kept activations at ``cut`` (computed from the nearest cut
        before it; the input when there is no graph, or when they would not
        fit ``CACHE_BYTES``)."""
        if self.segments is None or cut == 0:
            return self._input_cache()
        if self.cache is not None and self.cache.cut == cut:
            return self.cache
        source = self.cache if self.cache is not None and self.cache.cut < cut else self._input_cache()
        if self._bytes_per_image(source, cut) * (self.unit + self._images(self.evaluation)) > CACHE_BYTES:
            return source  # (its activations were normalised as the unmasked network's, like any cut's)
        self.cache = None  # the old one goes when the new one is built (``source`` holds it meanwhile)
        if self.base_statistics is None:
            self.base_statistics = self._unmasked_statistics()
        for m, state in zip(self.norms, self.base_statistics):
            m.load_state_dict(state)  # the layers before the cut run as in the unmasked network
        self.cache = self._advance(source, cut)
        return self.cache

    def _anchor_cache(self, cut: int) -> Cache:
        """The anchor's activations entering ``cut`` (from its nearest kept
        cut before it), one-pass: BatchNorm on the batch's own statistics.
        Kept while they fit ``CACHE_BYTES`` beside the others (the deepest
        are dropped first)."""
        if cut in self.anchor_caches:
            return self.anchor_caches[cut]
        below = [c for c in self.anchor_caches if c < cut]
        source = self.anchor_caches[max(below)] if below else self._input_cache()
        self.masks.set(self.masks_of(self.anchored or {}))
        for m in self.norms:
            m.train()
        try:
            evaluation = self.segments.advance(source.evaluation, source.cut, cut)
        finally:
            self.masks.clear()
            for m in self.norms:
                m.eval()
        self.passes += (self._share(source.cut) - self._share(cut)) * self._images(self.evaluation) / self.unit
        cache = Cache(cut, [], evaluation)
        size = cache.nbytes()
        for c in sorted(self.anchor_caches, reverse=True):
            if size + sum(v.nbytes() for v in self.anchor_caches.values()) <= CACHE_BYTES:
                break
            if c != source.cut:
                del self.anchor_caches[c]
        if size + sum(v.nbytes() for v in self.anchor_caches.values()) <= CACHE_BYTES:
            self.anchor_caches[cut] = cache
        return cache

    def _input_cache(self) -> Cache:
        segs = self.segments
        if segs is None:
            return Cache(0, [{"x": x} for x in self.calibration or ()], [{"x": x} for x in self.evaluation])
        return Cache(0, segs.inputs(self.calibration or ()), segs.inputs(self.evaluation))

    def _bytes_per_image(self, source: Cache, cut: int) -> float:
        env = source.evaluation[0]
        first = {k: (v[:1] if isinstance(v, torch.Tensor) else v) for k, v in env.items()}
        flags = [m.training for m in self.norms]
        with torch.no_grad():
            out = self.segments.run(first, source.cut, cut, self.segments.entering(cut))
        for m, flag in zip(self.norms, flags):
            m.train(flag)
        return float(sum(v.numel() * v.element_size() for v in out.values() if isinstance(v, torch.Tensor)))

    def _advance(self, source: Cache, cut: int) -> Cache:
        """The activations entering ``cut``: calibration batches through
        BatchNorm in training mode (as re-estimation runs them), evaluation
        batches in eval mode with the unmasked statistics (one-pass: in
        training mode)."""
        segs = self.segments
        cost = segs.share(source.cut) - segs.share(cut)
        calibration = []
        if self.calibration is not None:
            for m in self.norms:
                m.train()
            calibration = segs.advance(source.calibration, source.cut, cut)
            self.passes += cost  # every calibration image, through the segment
            for m, state in zip(self.norms, self.base_statistics):
                m.eval()
                m.load_state_dict(state)
        else:
            for m in self.norms:
                m.train()
        evaluation = segs.advance(source.evaluation, source.cut, cut)
        self.passes += cost * self._images(self.evaluation) / self.unit
        for m in self.norms:
            m.eval()
        return Cache(cut, calibration, evaluation)

    def _head(self, cache: Cache, share: float):
        """The first ``share`` of the calibration and evaluation batches (and
        the reference predictions).  Batches normalised by their own
        statistics (calibration; one-pass evaluation) are taken whole: a cut
        batch would be normalised otherwise than the kept activations were."""
        calibration = cache.calibration if self.calibration is not None else None
        if share >= 1.0:
            return calibration, cache.evaluation, self.reference
        n_eval = max(1, math.ceil(share * self._images(self.evaluation)))
        whole = calibration is None
        evaluation = first_images(cache.evaluation, n_eval, whole)
        reference = [r["r"] for r in first_images([{"r": r} for r in self.reference], n_eval, whole)]
        if calibration is not None:
            calibration = first_images(calibration, math.ceil(share * self.unit), True)
        return calibration, evaluation, reference

    def _recalibrate(self, start: int, calibration: List[Dict[str, Any]]) -> None:
        """BatchNorm statistics re-estimated on the calibration batches for
        the layers from ``start`` on (those before it are as unmasked)."""
        if self.segments is None:
            # a process's own candidate: under torchrun the others measure others
            recalibrate_batchnorm(self.work, [env["x"] for env in calibration], distributed=False)
            self.passes += self._images(calibration) / self.unit
            return
        norms = self.segments.norms_after(start)
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            with torch.no_grad():
                for env in calibration:
                    self.segments.run(env, start)
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
                m.eval()
        self.passes += self.segments.share(start) * self._images(calibration) / self.unit

    def _kl(self, start: int, evaluation, reference) -> float:
        if self.segments is None:
            return mean_kl(self.work, [env["x"] for env in evaluation], reference)
        return mean_kl(lambda env: self.segments.run(env, start), evaluation, reference)

    @staticmethod
    def _images(batches) -> int:
        return sum(batch_size(b) for b in batches)


def _norms(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

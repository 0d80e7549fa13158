"""Which input and output channels each layer lost in a surgery, in the
original numbering, recorded while Torch-Pruning prunes group after group
(bias compensation reads them)."""

from __future__ import annotations

from typing import Dict, List

from torch import nn

__all__ = ["ChannelMaps"]


class ChannelMaps:
    """Which original input channels / features each conv and linear layer
    lost, and which outputs it kept, in the *original* numbering.  Torch-Pruning
    gives each group's indices in the numbering of the moment (a layer fed by a
    concat may lose channels to several groups), so positions are tracked."""

    def __init__(self, model: nn.Module) -> None:
        # per layer, the original index of each input / output position left
        self.inputs: Dict[str, List[int]] = {}
        self.outputs: Dict[str, List[int]] = {}
        for n, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                self.inputs[n], self.outputs[n] = list(range(m.in_channels)), list(range(m.out_channels))
            elif isinstance(m, nn.Linear):
                self.inputs[n], self.outputs[n] = list(range(m.in_features)), list(range(m.out_features))
        self._in_widths = {n: len(v) for n, v in self.inputs.items()}
        self._out_widths = {n: len(v) for n, v in self.outputs.items()}

    def record(self, group, DG, names) -> None:
        for dep, idxs in group:
            name = names.get(dep.target.module)
            if name not in self.inputs:
                continue
            if DG.is_out_channel_pruning_fn(dep.handler):
                side = self.outputs
            elif DG.is_in_channel_pruning_fn(dep.handler):
                side = self.inputs
            else:
                continue
            gone = {int(i) for i in idxs}
            side[name] = [p for j, p in enumerate(side[name]) if j not in gone]

    def as_dict(self) -> Dict[str, Dict[str, List[int]]]:
        """Per layer whose inputs were removed: ``removed_inputs`` and
        ``kept_outputs``, in the original numbering."""
        return {
            n: {
                "removed_inputs": sorted(set(range(self._in_widths[n])) - set(kept)),
                "kept_outputs": self.outputs[n],
            }
            for n, kept in self.inputs.items()
            if len(kept) < self._in_widths[n]
        }

    def kept_outputs(self) -> Dict[str, List[int]]:
        """Per layer whose outputs were removed, the original index of each output it kept."""
        return {n: kept for n, kept in self.outputs.items() if len(kept) < self._out_widths[n]}

"""What each element of an activation-maximisation batch optimises: one row per run (unit, objective, seed,
initialisation and regulariser weights), held as tensors so the objectives, initial images and penalties act
on the whole batch at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import pandas as pd
import torch

from unitscope.errors import UnitscopeError

__all__ = ["INITS", "OBJECTIVES", "ActmaxError", "UnitSpecs"]

OBJECTIVES = ("channel", "neuron", "topk", "class_conditional")
INITS = ("gaussian", "gray_noise", "lowfreq", "image")
NEURON_OBJECTIVES = ("neuron", "class_conditional")


class ActmaxError(UnitscopeError, ValueError):
    """Bad unit specs, layer or settings for activation maximisation; the message is one line."""


def _checked_row(i: int, row: Mapping) -> dict:
    """One row of `UnitSpecs.from_rows`, validated, with its defaults and the positions its objective ignores
    set to -1."""
    objective, init = row["objective"], row.get("init", "gray_noise")
    if objective not in OBJECTIVES:
        raise ActmaxError(f"unit {i}: objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if init not in INITS:
        raise ActmaxError(f"unit {i}: init {init!r} is not one of {', '.join(INITS)}")
    y, x = int(row.get("y", -1)), int(row.get("x", -1))
    if objective in NEURON_OBJECTIVES and (y < 0 or x < 0):
        raise ActmaxError(f"unit {i}: objective {objective} needs a neuron position y, x >= 0")
    target = int(row.get("target_class", -1))
    if objective == "class_conditional" and target < 0:
        raise ActmaxError(f"unit {i}: objective class_conditional needs target_class >= 0")
    return {
        "channel": int(row["channel"]),
        "objective": OBJECTIVES.index(objective),
        "y": y if objective in NEURON_OBJECTIVES else -1,
        "x": x if objective in NEURON_OBJECTIVES else -1,
        "target_class": target if objective == "class_conditional" else -1,
        "class_weight": float(row.get("class_weight", 0.0)),
        "seed": int(row.get("seed", 0)),
        "init": INITS.index(init),
        "l2": float(row.get("l2", 0.0)),
        "tv": float(row.get("tv", 0.0)),
    }


@dataclass
class UnitSpecs:
    """One row per batch element, every field a tensor of length B.

    `objective` and `init` index OBJECTIVES and INITS; `y`, `x` are -1 for channel objectives and
    `target_class` is -1 unless the objective is class_conditional.
    """

    channel: torch.Tensor
    objective: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    target_class: torch.Tensor
    class_weight: torch.Tensor
    seed: torch.Tensor
    init: torch.Tensor
    l2: torch.Tensor
    tv: torch.Tensor

    INTEGER_FIELDS = ("channel", "objective", "y", "x", "target_class", "seed", "init")

    def __len__(self) -> int:
        return len(self.channel)

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping]) -> UnitSpecs:
        """From dicts with channel, objective (name), and optionally y, x, target_class, class_weight, seed,
        init (name), l2, tv."""
        if not rows:
            raise ActmaxError("no units to optimise (empty unit list)")
        checked = [_checked_row(i, row) for i, row in enumerate(rows)]
        return cls(
            **{
                f.name: torch.tensor(
                    [row[f.name] for row in checked],
                    dtype=torch.long if f.name in cls.INTEGER_FIELDS else torch.float32,
                )
                for f in fields(cls)
            }
        )

    def select(self, index) -> UnitSpecs:
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        return UnitSpecs(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame({f.name: getattr(self, f.name).numpy() for f in fields(self)})
        frame["objective"] = [OBJECTIVES[i] for i in frame["objective"]]
        frame["init"] = [INITS[i] for i in frame["init"]]
        return frame

"""The selected face set compared with each control family's null distribution (one-sided empirical p-values),
per readout of the faces interventions (the control draws themselves: `interventions.controls`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from unitscope.stats import empirical_p

# For each metric, the direction in which the selected set's effect is "stronger" than a control's,
# for (lesion, keep-only): a lesion that hurts more, a keep-only set that preserves more.
METRIC_DIRECTIONS = {
    "fixed_accuracy": ("lower", "higher"),
    "retrained_accuracy": ("lower", "higher"),
    "downstream_fixed_accuracy": ("lower", "higher"),
    "downstream_retrained_accuracy": ("lower", "higher"),
    "kl_faces": ("higher", "lower"),
    "kl_nonfaces": ("higher", "lower"),
    "kl_face_ratio": ("higher", "lower"),
    "pca_pc1": ("two-sided", "two-sided"),
}


def control_table(conditions: pd.DataFrame) -> pd.DataFrame:
    """Selected set versus each control family's null distribution, per mode and metric.

    A channel set drawn twice is one piece of evidence: the null is over distinct sets (`n_distinct`),
    so a degenerate control (e.g. matched draws that can only pick the same channels) cannot give a
    small p-value by repetition.
    """
    metrics = [m for m in METRIC_DIRECTIONS if m in conditions] + [c for c in conditions if c.startswith("pca_n")]
    rows = []
    for mode_index, mode in enumerate(("lesion", "keep_only")):
        chosen = conditions[(conditions["family"] == "selected") & (conditions["mode"] == mode)]
        for family in ("random", "matched"):
            drawn = conditions[(conditions["family"] == family) & (conditions["mode"] == mode)]
            if "channels" in drawn:
                distinct = drawn["channels"].map(lambda channels: tuple(sorted(channels))).duplicated()
                null_rows = drawn[~distinct.to_numpy()]
            else:
                null_rows = drawn
            for metric in metrics:
                value = float(chosen[metric].iloc[0])
                null = null_rows[metric].to_numpy(dtype=np.float64)
                null = null[np.isfinite(null)]
                if not np.isfinite(value) or len(null) == 0:
                    continue
                direction = METRIC_DIRECTIONS.get(metric, ("two-sided", "two-sided"))[mode_index]
                rows.append(
                    {
                        "mode": mode,
                        "control": family,
                        "metric": metric,
                        "selected": value,
                        "intact": float(conditions.loc[conditions["family"] == "intact", metric].iloc[0]),
                        "null_mean": float(null.mean()),
                        "null_low": float(np.percentile(null, 2.5)),
                        "null_high": float(np.percentile(null, 97.5)),
                        "n_draws": len(drawn),
                        "n_distinct": len(null),
                        "direction": direction,
                        "p_value": empirical_p(value, null, direction),
                    }
                )
    return pd.DataFrame(rows)

"""Several labelled sets tested at once (concepts of a layer, colour sets of several layers): Benjamini-Hochberg
q-values within each family of tests, so a verdict at level alpha controls the false discovery rate over the family
rather than each test's own error."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from unitscope.stats import benjamini_hochberg


def family_q_values(table: pd.DataFrame, p_column: str, by: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(q [n], tested [n]) per row of `table`: the BH-adjusted `p_column` within the rows sharing the `by` columns
    (one family), and how many p-values that family adjusts over. A NaN p (no controls) is no test: its q is NaN
    and it is not counted."""
    q, tested = np.full(len(table), np.nan), np.zeros(len(table), dtype=np.int64)
    if table.empty:
        return q, tested
    p = table[p_column].to_numpy(dtype=np.float64)
    for rows in table.groupby(list(by), sort=False).indices.values():
        finite = rows[np.isfinite(p[rows])]
        if len(finite):
            q[finite] = benjamini_hochberg(p[finite])
        tested[rows] = len(finite)
    return q, tested

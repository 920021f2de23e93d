"""The actmax card on the landing page (section.finding_of) on constructed result tables: a shortcut model with
colour-coding layers and a model without either give different answers, the null one reading as null; the numbers
carry intervals and N; the card's figure is one the study draws. Also the conclusion's interval spelling and the
figures' width on a 960-px text column."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unitscope.report.plotting import DPI
from unitscope.report.render import render_text
from unitscope.report.sections import ANSWER_CHARS
from unitscope.studies.actmax.figures import FIGURES, color_shape_figure, evaluation_figure
from unitscope.studies.actmax.section import STUDY_DIR, ReportInputs, _verdicts, finding_of

N = 5000


def _evaluation(biased: tuple[float, float, float], conflicting: tuple[float, float, float]) -> list[dict]:
    """Evaluation rows as colored_mnist.evaluate_model writes them: (accuracy, CI low, CI high) per set."""
    rows = []
    for name, (accuracy, low, high) in (("biased", biased), ("unbiased", conflicting), ("conflicting", conflicting)):
        errors = round(N * (1 - accuracy))
        rows.append(
            {
                "set": name,
                "n": N,
                "accuracy": accuracy,
                "accuracy_ci95": [low, high],
                "errors": errors,
                "errors_as_color_class": errors // 3,
                "error_color_fraction": (errors // 3) / errors,
                "error_color_ci95": [0.3, 0.36],
                "mismatched_color": N,
                "follows_color": errors // 3,
                "follows_color_fraction": (errors // 3) / N,
            }
        )
    return rows


def _color_table(medians: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    """color_vs_shape.parquet: per layer (median colour index, CI low, CI high) over 16 channels."""
    return pd.DataFrame(
        [
            {
                "layer": layer,
                "n_channels": 16,
                "n_responsive": 16,
                "median_color_index": median,
                "median_color_index_ci95": [low, high],
                "color_dominated": int(16 * median),
                "color_dominated_fraction": int(16 * median) / 16,
                "color_dominated_ci95": [0.1, 0.9],
            }
            for layer, (median, low, high) in medians.items()
        ]
    )


def _units(flagged: int, total: int = 20) -> pd.DataFrame:
    """polysemanticity.parquet: `total` converged unit-runs, the first `flagged` of them flagged."""
    return pd.DataFrame(
        {
            "layer": ["conv3"] * total,
            "channel": list(range(total)),
            "objective": ["channel"] * total,
            "y": [-1] * total,
            "x": [-1] * total,
            "score": [0.8 if i < flagged else 0.1 for i in range(total)],
            "converged": [True] * total,
            "flagged": [i < flagged for i in range(total)],
            "n_seeds": [3] * total,
        }
    )


def _inputs(evaluation, color_table, units) -> ReportInputs:
    """Only what `_verdicts` reads; the rest of the report's inputs are not needed for the card."""
    return ReportInputs(
        evaluation=evaluation,
        info={},
        selection={},
        probe=pd.DataFrame(),
        units=units,
        metrics=pd.DataFrame(),
        reference=pd.DataFrame(),
        color_table=color_table,
        interpolation=pd.DataFrame(),
        interp_images={},
        runs={},
    )


SHORTCUT = _inputs(
    _evaluation((0.95, 0.944, 0.956), (0.08, 0.073, 0.088)),
    _color_table({"conv1": (0.80, 0.76, 0.81), "conv2": (0.45, 0.38, 0.55), "conv3": (0.83, 0.76, 0.84)}),
    _units(flagged=2),
)
NO_SHORTCUT = _inputs(
    _evaluation((0.90, 0.89, 0.91), (0.895, 0.886, 0.903)),
    _color_table({"conv1": (0.55, 0.45, 0.62), "conv3": (0.30, 0.22, 0.41)}),
    _units(flagged=0),
)


def test_a_shortcut_and_no_shortcut_give_different_answers_and_the_null_one_reads_as_null():
    positive, null = finding_of(_verdicts(SHORTCUT)), finding_of(_verdicts(NO_SHORTCUT))
    assert positive["answer"] != null["answer"]
    assert positive["null"] is False and null["null"] is True
    assert "The CNN takes the colour shortcut (" in positive["answer"]
    assert "(95.0% accurate on biased digits, 8.0% on conflicting ones)" in positive["answer"]
    # the layers whose median colour index has its whole interval above 0.5, and not conv2 (interval spans 0.5)
    assert "conv1 and conv3 channels code colour more than digit shape" in positive["answer"]
    assert "conv2" not in positive["answer"]
    assert "2 of 20 judged units are flagged polysemantic" in positive["answer"]
    assert "The CNN shows no colour shortcut" in null["answer"] and "within sampling error" in null["answer"]
    assert "no layer's channels code colour more than digit shape" in null["answer"]
    assert "none of 20 judged units is flagged polysemantic" in null["answer"]
    for card in (positive, null):
        assert card["answer"].endswith(".") and ". " not in card["answer"] and len(card["answer"]) <= ANSWER_CHARS
        assert card["question"].endswith("?")


def test_colour_in_the_layers_alone_is_not_a_null_result_and_reversed_accuracies_are_said_as_such():
    layers_only = _inputs(
        _evaluation((0.80, 0.79, 0.81), (0.85, 0.84, 0.86)),  # conflicting above biased: no shortcut
        _color_table({"conv1": (0.80, 0.76, 0.81)}),
        _units(flagged=1),
    )
    card = finding_of(_verdicts(layers_only))
    assert card["null"] is False
    assert "shows no colour shortcut" in card["answer"]
    assert "conflicting higher" in card["answer"]
    assert "conv1 channels code colour" in card["answer"]
    assert "1 of 20 judged units is flagged polysemantic" in card["answer"]


def test_numbers_carry_intervals_and_n_and_the_figure_is_one_the_study_draws():
    card = finding_of(_verdicts(SHORTCUT))
    assert len(card["numbers"]) == 3
    biased, conflicting, colour = card["numbers"]
    assert (biased["value"], biased["interval"]) == ("95.0%", "[94.4%, 95.6%]")
    assert (conflicting["value"], conflicting["interval"]) == ("8.0%", "[7.3%, 8.8%]")
    assert biased["n"] == f"N = {N} biased test digits" and conflicting["n"] == f"N = {N} conflicting test digits"
    # the deepest probed layer's median colour index with its bootstrap interval over its channels
    assert "conv3" in colour["label"] and (colour["value"], colour["interval"]) == ("0.83", "[0.76, 0.84]")
    assert colour["n"] == "N = 16 conv3 channels"
    for number in card["numbers"]:
        assert "95%" in number["label"] and re.fullmatch(r"\[[^,\]]+, [^,\]]+\]", number["interval"])
    figure = card["figure"]
    assert figure["src"].startswith("figures/actmax/") and figure["src"].endswith(".png")
    assert figure["src"].removeprefix("figures/actmax/").removesuffix(".png") in FIGURES
    assert figure["caption"].startswith("Look") and figure["alt"] and figure["alt"] != figure["caption"]


def test_the_conclusion_writes_intervals_as_low_high_in_brackets():
    context = {"rho": 0.99, "info": {"widths": [8, 16, 16], "train_images": 3000}, **_verdicts(SHORTCUT)}
    conclusion = render_text("actmax_conclusion.j2", STUDY_DIR, **context)
    assert "conv1 0.80 [0.76, 0.81]" in conclusion and "95.0% [94.4%, 95.6%]" in conclusion
    assert not re.search(r"CI \d", conclusion) and "–0." not in conclusion


@pytest.mark.parametrize("draw", ["evaluation", "color_vs_shape"])
def test_figures_fit_the_text_column(tmp_path, draw):
    path = tmp_path / f"{draw}.png"
    if draw == "evaluation":
        evaluation_figure(_evaluation((0.95, 0.944, 0.956), (0.08, 0.073, 0.088)), 0.99, path)
    else:
        rng = np.random.default_rng(0)
        probe = pd.DataFrame(
            {
                "kind": "channel",
                "layer": ["conv1"] * 16 + ["conv2"] * 32 + ["conv3"] * 64,
                "color_index": rng.uniform(0, 1, 112),
            }
        )
        metrics = pd.DataFrame(
            {"layer": ["conv1", "conv3"] * 6, "edge_energy": rng.uniform(0, 0.3, 12), "color_concentration": 0.9}
        )
        reference = pd.DataFrame({"edge_energy": rng.uniform(0, 0.3, 50), "color_concentration": 1.0})
        color_shape_figure(probe, metrics, reference, path)
    width, _ = Image.open(path).size
    assert DPI == 110 and 500 < width <= 960

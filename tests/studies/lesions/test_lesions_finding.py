"""The lesions section's words follow its rules (stated in section.py): a rho interval above, below or across zero
reads as "predicts", "runs against", "does not predict" (a null result); a set is "shown" only when it beats both
controls; claims and the card carry intervals and N. On constructed tables, so each wording is reached."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from unitscope.studies.lesions import section

CLASSES = ["airplane", "automobile", "bird"]


def tables(rho=(0.4, 0.2, 0.6), p=0.01, change=-0.3) -> dict:
    pooled = pd.DataFrame(
        [
            {
                "kind": kind,
                "k": k,
                "mode": mode,
                "control": control,
                "n_classes": 3,
                "accuracy_change": change if mode == "lesion" else -0.5,
                "change_low": change - 0.1,
                "change_high": change + 0.1,
                "specificity": change / 2,
                "null_mean": -0.01,
                "null_low": -0.05,
                "null_high": 0.02,
                "p_value": p,
                "n_draws": 20,
            }
            for kind in ("selective", "important")
            for k in (1, 4)
            for mode in ("lesion", "keep_only")
            for control in ("random", "matched")
        ]
    )
    rng = np.random.default_rng(0)
    units = pd.DataFrame(
        [
            {
                "channel": u,
                "class": c,
                "class_name": name,
                "selectivity": rng.uniform(),
                "class_index": 0.5,
                "top_class": 0,
                "accuracy_drop_rank": rng.uniform(-0.05, 0.2),
                "accuracy_drop": rng.uniform(-0.05, 0.2),
                "log_prob_drop": 0.1,
            }
            for u in range(8)
            for c, name in enumerate(CLASSES)
        ]
    )
    sets = pd.DataFrame(
        [
            {"target": 0, "class_name": "airplane", "k": 1, "kind": "selective", "mode": "lesion", "control": "random"}
            | {"channels": [2]}
        ]
    )
    per_class = [{"class_name": n, "rho": 0.1, "low": -0.2, "high": 0.3, "n_units": 8} for n in CLASSES]
    mean = {"class_name": "mean over classes", "rho": rho[0], "low": rho[1], "high": rho[2], "n_units": 8}
    agreement = pd.DataFrame([*per_class, mean]).assign(kind="per class")
    row = {"layer": "layer3", "label": "nefesi class index", "evidence": "own lesion", "rho": 0.2, "low": -0.1}
    agreement = pd.concat([agreement, pd.DataFrame([row | {"high": 0.5, "n_units": 8, "kind": "agreement"}])])
    info = {
        "model": "resnet56_cifar",
        "layer": "layer3",
        "dataset": "cifar10",
        "tail": "exact",
        "n_units": 8,
        "n_images": 60,
        "n_ranking": 30,
        "n_evaluation": 30,
        "class_names": CLASSES,
        "intact_accuracy": [0.9, 0.8, 0.7],
        "sizes": [1, 4],
        "n_random": 20,
        "n_matched": 20,
        "ablation": "zero",
        "spearman_mean": {"rho": rho[0], "low": rho[1], "high": rho[2]},
    }
    methods = agreement[agreement["kind"] == "agreement"].assign(model="resnet56_cifar")
    return {"pooled": pooled, "units": units, "sets": sets, "agreement": agreement, "methods": methods, "info": info}


@pytest.mark.parametrize(
    ("rho", "words", "null"),
    [((0.4, 0.2, 0.6), "predicts a unit's importance", False), ((-0.4, -0.6, -0.1), "runs against", False),
     ((0.1, -0.2, 0.3), "does not predict", True)],
)  # fmt: skip
def test_the_rho_interval_decides_the_answer(rho, words, null):
    card = section.finding_of(tables(rho=rho), alpha=0.05)
    assert words in card["answer"] and card["null"] is null and len(card["answer"]) <= 240
    assert card["answer"].count(". ") == 0 and card["answer"].endswith(".")
    assert f"{rho[0]:.2f} [{rho[1]:.2f}, {rho[2]:.2f}]" in card["answer"]


def test_a_set_that_does_not_beat_its_controls_is_no_more_than_theirs():
    shown = section.finding_of(tables(p=0.01), alpha=0.05)["answer"]
    weak = section.finding_of(tables(p=0.2), alpha=0.05)["answer"]
    assert shown.endswith("most selective units hurts it more than same-size controls.")
    assert weak.endswith("most selective units hurts it no more than same-size controls.")
    claims = section.claims(tables(p=0.2), alpha=0.05)
    assert len(claims) == 4 and not any(claim["shown"] for claim in claims)
    assert all(claim["shown"] for claim in section.claims(tables(p=0.01), alpha=0.05))


def test_numbers_and_claims_carry_intervals_and_n():
    card = section.finding_of(tables(), alpha=0.05)
    assert [number["interval"] for number in card["numbers"]] == ["[0.20, 0.60]", "[-40.0, -20.0]", "[-40.0, -20.0]"]
    assert card["numbers"][0]["n"] == "8 units × 3 classes"
    assert all("30 held-out images" in number["n"] for number in card["numbers"][1:])
    [first, *_] = section.claims(tables(), alpha=0.05)
    assert first["effect"] == "-30.0 pts [-40.0, -20.0]" and first["p"] == "random 0.010, matched 0.010"
    assert first["claim"].startswith("The 1 unit most selective for a class is necessary for it")
    html = section.body_html(tables(), alpha=0.05)
    assert "Do the methods agree?" in html and "nefesi class index" in html and "units/resnet56_cifar__layer3__" in html


# ---------------------------------------------------------------------------------------------- several tests at once


def concept_compared(p: dict[str, float]) -> pd.DataFrame:
    """A concept comparison table (both control families) whose KL-difference p-values are `p` per concept, with
    the stage's q-values."""
    from unitscope.studies.lesions import concept_units as cn
    from unitscope.studies.lesions.multiplicity import family_q_values

    rows = [
        {column: 0.0 for column in cn.COMPARISON_COLUMNS}
        | {"layer": "features.18", "concept": concept, "category": "object", "control": control, "set_size": 4}
        | {"channels": [1, 2, 3, 4], "fraction": 1 / 3, "n_high": 70, "n_low": 80, "n_draws": 20, "n_distinct": 20}
        | {"kl_high": 0.2, "kl_low": 0.05, "kl_difference": 0.15, "mass_change_high": np.nan, "p_kl_difference": value}
        for concept, value in p.items()
        for control in ("random", "matched")
    ]
    table = pd.DataFrame(rows).assign(model="mobilenet_v2_imagenet", n_frames=233)
    table["q_value"], table["n_tested"] = family_q_values(table, "p_kl_difference", ["control"])
    return table


def colour_compared(gap_p: dict[str, float]) -> pd.DataFrame:
    """A colour comparison table (colour sets only) whose gap p-values are `gap_p` per layer, with the q-values."""
    from unitscope.studies.lesions.colour_units import MEASURES, adjust_over_layers

    rows = [
        {"layer": layer, "kind": "colour", "measure": m, "set_size": 4, "channels": [0, 1, 2, 3], "intact": 0.9}
        | {"value": 0.8, "change": -0.1, "change_low": -0.15, "change_high": -0.05, "null_mean": 0.0}
        | {"null_low": -0.02, "null_high": 0.02, "p_value": p if m == "gap" else 0.5, "n_images": 500}
        | {"n_draws": 50, "n_distinct": 50}
        for layer, p in gap_p.items()
        for m in MEASURES
    ]
    return adjust_over_layers(pd.DataFrame(rows))


def test_concept_and_colour_verdicts_read_q_adjusted_over_the_sets_tested():
    parts = {"concept": concept_compared({"car": 0.01, "road": 0.04, "sky": 0.5})}
    claims = {c["claim"].split(" detectors")[0]: c for c in section.claims(tables() | parts, alpha=0.05)}
    # BH over 3 concepts: 0.01, 0.04, 0.5 -> q 0.03, 0.06, 0.5: road's p is below 0.05, its q is not
    assert claims["The 4 car"]["shown"] and not claims["The 4 road"]["shown"] and not claims["The 4 sky"]["shown"]
    assert claims["The 4 road"]["p"] == "random p 0.040, q 0.060; matched p 0.040, q 0.060 (BH over 3 concepts)"
    html = section.body_html(tables() | parts, alpha=0.05)
    assert "Benjamini-Hochberg over the 3 concepts tested" in html and "q (random)" in html
    assert "sets (car; q < 0.05, Benjamini-Hochberg over the 3 concepts)." in section.conclusion_text(
        tables() | parts, alpha=0.05
    )
    summary = section.summary(tables() | parts, alpha=0.05)["concept_units"]
    assert summary[1]["q_kl_difference"] == {"random": pytest.approx(0.06), "matched": pytest.approx(0.06)}

    both = {"colour": colour_compared({"conv1": 0.03, "conv2": 0.04})}  # q 0.04 for both: both shown
    assert [c["shown"] for c in section.claims(tables() | both, alpha=0.05)[4:]] == [True, True]
    one = {"colour": colour_compared({"conv1": 0.03, "conv2": 0.4})}  # q 0.06 and 0.4: neither
    colour_claims = section.claims(tables() | one, alpha=0.05)[4:]
    assert [c["shown"] for c in colour_claims] == [False, False]
    assert colour_claims[0]["p"] == "random p 0.030, q 0.060 (BH over 2 layers)"
    assert "in 0 of 2 layers (q < 0.05, Benjamini-Hochberg over the layers)" in section.conclusion_text(
        tables() | one, alpha=0.05
    )
    single = section.claims(tables() | {"colour": colour_compared({"conv1": 0.03})}, alpha=0.05)[4]
    assert single["shown"] and single["p"] == "random p 0.030, q 0.030 (BH over 1 layer)"  # one layer: q = p


def test_the_agreement_table_gives_only_n_below_five_shared_units():
    methods = tables()["methods"]
    few = methods.assign(rho=np.nan, low=np.nan, high=np.nan, n_units=3, label="actmax colour score")
    html = section.body_html(tables() | {"methods": pd.concat([methods, few])}, alpha=0.05)
    assert '>n/a</td><td class="num">3</td>' in html
    assert "with fewer than 5 shared units only their number is given" in " ".join(html.split())

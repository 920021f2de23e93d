"""Class units: do the units nefesi calls selective for a class matter for that class?

Selectivity of unit u for class c, S[u, c]: nefesi's activation-weighted share of class c among u's top-N
exemplars (`nefesi.indexes.class_selectivity`, the quantity its class index counts). Importance of u for c: the
drop of class-c accuracy when u alone is lesioned. The labelled images are split in two halves, seeded and
stratified by class: the ranking half picks the k most important units of each class (ties broken by the drop of
the true class's log-probability); every effect reported is measured on the evaluation half, so a set chosen for a
large effect is not scored on the images that chose it.

For each class c and size k, the k most selective and the k most important units are lesioned (and kept alone),
against random sets of k units drawn without the set's units and sets matched to it on mean activation. All
conditions go through the network after the layer at once (`interventions.tail`); a condition is scored by
class-c accuracy, the accuracy on the other classes' images, and their difference (specificity).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from unitscope.interventions.conditions import ConditionBuilder, Conditions
from unitscope.interventions.controls import matched_sets, random_sets
from unitscope.interventions.tail import Tail, condition_outputs
from unitscope.stats import bootstrap_interval, derived_rng, empirical_p, spearman

SET_KINDS = ("selective", "important")
MODES = ("lesion", "keep_only")
# A lesion is stronger when it lowers class-c accuracy more; a kept-alone set when it preserves more.
DIRECTIONS = {"lesion": "lower", "keep_only": "higher"}


@dataclass(frozen=True)
class LabelledImages:
    """The labelled images' classes (= logit indexes) and which half each belongs to."""

    labels: np.ndarray  # [N] int
    ranking: np.ndarray  # [N] bool: True = ranking half, False = evaluation half
    n_classes: int

    def half(self, ranking: bool) -> np.ndarray:
        return self.ranking == ranking

    def held_out(self) -> LabelledImages:
        """The evaluation half alone (what every set condition is scored on)."""
        keep = ~self.ranking
        return LabelledImages(self.labels[keep], np.zeros(int(keep.sum()), dtype=bool), self.n_classes)


def stratified_halves(labels: np.ndarray, seed: int) -> np.ndarray:
    """[N] bool: a seeded half (rounded down) of each class's images is the ranking half."""
    rng = derived_rng(seed, "lesions/class-halves")
    ranking = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        ranking[rng.permutation(members)[: len(members) // 2]] = True
    return ranking


def evaluate(
    tail: Tail,
    cache: torch.Tensor,
    ablate: torch.Tensor,
    fill: torch.Tensor,
    labels: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    with_log_prob: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(correct [k, N] bool, the true class's log-probability [k, N] or None) of k conditions on N images."""
    target = torch.as_tensor(labels, dtype=torch.long)
    correct = np.empty((ablate.shape[0], len(labels)), dtype=bool)
    log_prob = np.empty(correct.shape, dtype=np.float32) if with_log_prob else None
    outputs = condition_outputs(tail, cache, ablate, fill, device=device, with_pooled=False, progress=True)
    for rows, _, logits in outputs:
        correct[rows] = (logits.argmax(-1) == target).numpy()
        if with_log_prob:
            picked = torch.log_softmax(logits, dim=-1).gather(-1, target.expand(logits.shape[0], -1)[..., None])
            log_prob[rows] = picked[..., 0].numpy()
    return correct, log_prob


def class_means(values: np.ndarray, images: LabelledImages, ranking: bool) -> np.ndarray:
    """[k, K] mean of `values` [k, N] (e.g. correct) over each class's images of one half (NaN: no image)."""
    mask = images.half(ranking)
    onehot = (images.labels[mask][:, None] == np.arange(images.n_classes)).astype(np.float64)
    counts = onehot.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (values[:, mask].astype(np.float64) @ onehot) / counts


def other_accuracy(correct: np.ndarray, images: LabelledImages, ranking: bool) -> np.ndarray:
    """[k, K] accuracy on the half's images of every class but c, for each class c."""
    mask = images.half(ranking)
    onehot = (images.labels[mask][:, None] == np.arange(images.n_classes)).astype(np.float64)
    hits, counts = correct[:, mask].astype(np.float64) @ onehot, onehot.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (hits.sum(1, keepdims=True) - hits) / (counts.sum() - counts)


# ---------------------------------------------------------------------------------------------- units


def unit_effects(
    tail: Tail, cache: torch.Tensor, fill: torch.Tensor, images: LabelledImages, *, device="cpu"
) -> dict[str, np.ndarray]:
    """Each unit's own lesion, all units at once: per half, class accuracy of the intact network [K] and the drop
    of class-c accuracy and of the true class's mean log-probability when u alone is lesioned [C, K]."""
    n_channels = fill.shape[0]
    ablate = torch.cat([torch.zeros(1, n_channels, dtype=torch.bool), torch.eye(n_channels, dtype=torch.bool)])
    correct, log_prob = evaluate(tail, cache, ablate, fill, images.labels, device=device, with_log_prob=True)
    effects = {}
    for name, ranking in (("rank", True), ("eval", False)):
        accuracy, mean_log_prob = class_means(correct, images, ranking), class_means(log_prob, images, ranking)
        effects[f"intact_{name}"] = accuracy[0]
        effects[f"accuracy_drop_{name}"] = accuracy[0] - accuracy[1:]
        effects[f"log_prob_drop_{name}"] = mean_log_prob[0] - mean_log_prob[1:]
    return effects


def most_important(effects: dict[str, np.ndarray], k: int, label: int) -> np.ndarray:
    """The k units whose own lesion lowers class `label`'s accuracy most on the ranking half (ties: the larger drop
    of its log-probability, then the lower channel)."""
    order = np.lexsort((-effects["log_prob_drop_rank"][:, label], -effects["accuracy_drop_rank"][:, label]))
    return order[:k].astype(np.int64)


def most_selective(shares: np.ndarray, k: int, label: int) -> np.ndarray:
    """The k units with the largest share of class `label` among their exemplars (ties: the lower channel)."""
    return np.argsort(-shares[:, label], kind="stable")[:k].astype(np.int64)


def unit_table(shares: np.ndarray, class_index: np.ndarray, effects: dict, class_names: list[str]) -> pd.DataFrame:
    """One row per (unit, class): selectivity, and the unit's own lesion effect on that class in each half."""
    n_units, n_classes = shares.shape
    return pd.DataFrame(
        {
            "channel": np.repeat(np.arange(n_units), n_classes),
            "class": np.tile(np.arange(n_classes), n_units),
            "class_name": np.tile(class_names, n_units),
            "selectivity": shares.reshape(-1),
            "class_index": np.repeat(class_index, n_classes),
            "top_class": np.repeat(shares.argmax(1), n_classes),
            "accuracy_drop_rank": effects["accuracy_drop_rank"].reshape(-1),
            "accuracy_drop": effects["accuracy_drop_eval"].reshape(-1),
            "log_prob_drop": effects["log_prob_drop_eval"].reshape(-1),
        }
    )


# ---------------------------------------------------------------------------------------------- sets and controls


@dataclass(frozen=True)
class SetDraws:
    """How many control sets each labelled set gets, and how they are matched: what `build_set_conditions` reads
    (the stages pass their settings, `plan.ControlledSettings`, which carry the same fields; tests and the bench
    build this)."""

    n_random: int
    n_matched: int
    matched_candidates: int
    seed: int


def labelled_sets(shares: np.ndarray, effects: dict, sizes: list[int]) -> list[dict]:
    """For each class and size k (k below the unit count): the k most selective and the k most important units."""
    n_units, n_classes = shares.shape
    sets = []
    for label in range(n_classes):
        for k in (size for size in sizes if size < n_units):
            for kind, channels in (
                ("selective", most_selective(shares, k, label)),
                ("important", most_important(effects, k, label)),
            ):
                sets.append({"target": label, "k": k, "kind": kind, "channels": channels})
    return sets


def build_set_conditions(sets: list[dict], channel_mean: np.ndarray, draws: SetDraws) -> Conditions:
    """intact; each set lesioned and kept alone; and for each set its random (drawn without the set's units) and
    activation-matched control sets, in both modes."""
    conditions = ConditionBuilder(len(channel_mean))
    conditions.add("intact", [], family="intact", mode="none", target=-1, k=0, kind="", draw=-1)
    for number, labelled in enumerate(sets):
        labels = {"target": labelled["target"], "k": labelled["k"], "kind": labelled["kind"]}
        purpose = f"lesions/class/{labelled['kind']}/{labelled['target']}/{labelled['k']}"
        channels = labelled["channels"]
        controls = {
            "random": random_sets(
                len(channel_mean), len(channels), draws.n_random, derived_rng(draws.seed, f"{purpose}/random"), channels
            ),
            "matched": matched_sets(
                channel_mean, channels, draws.n_matched, draws.matched_candidates, derived_rng(draws.seed, purpose)
            ),
        }
        for mode in MODES:
            conditions.add(f"set{number:04d}_{mode}", channels, family="labelled", mode=mode, **labels, draw=-1)
            for family, drawn in controls.items():
                for draw, control in enumerate(drawn):
                    name = f"set{number:04d}_{family}_{mode}_{draw:03d}"
                    conditions.add(name, control, family=family, mode=mode, **labels, draw=draw)
    return conditions.build()


def score_conditions(conditions: Conditions, correct: np.ndarray, images: LabelledImages) -> pd.DataFrame:
    """The conditions table with, on the evaluation half, the target class's accuracy, the other classes'
    accuracy, their changes from intact and the specificity (target change minus the others' change)."""
    table = conditions.table.copy()
    accuracy, others = class_means(correct, images, False), other_accuracy(correct, images, False)
    rows, target = np.arange(len(table)), table["target"].to_numpy().clip(min=0)
    table["accuracy"] = accuracy[rows, target]
    table["other_accuracy"] = others[rows, target]
    table["accuracy_change"] = table["accuracy"] - accuracy[0, target]
    table["other_change"] = table["other_accuracy"] - others[0, target]
    table["specificity"] = table["accuracy_change"] - table["other_change"]
    table["channels"] = [s.tolist() for s in conditions.sets]
    return table


def compare_sets(
    scored: pd.DataFrame, correct: np.ndarray, images: LabelledImages, *, n_bootstrap: int, seed: int
) -> pd.DataFrame:
    """One row per (labelled set, mode, control family): the set's change of class accuracy on the evaluation half
    with a paired bootstrap interval over that class's images, the control sets' null (over distinct sets) and
    one-sided empirical p-values of the change and of the specificity."""
    rows = []
    evaluation, intact = images.half(False), correct[0]
    labelled = scored[scored["family"] == "labelled"]
    for index, chosen in labelled.iterrows():
        members = evaluation & (images.labels == chosen["target"])
        paired = correct[index, members].astype(np.float64) - intact[members]
        rng = derived_rng(seed, f"lesions/class/bootstrap/{index}")
        low, high = bootstrap_interval(paired, rng, resamples=n_bootstrap)
        same = (
            (scored["target"] == chosen["target"]) & (scored["k"] == chosen["k"]) & (scored["kind"] == chosen["kind"])
        )
        for family in ("random", "matched"):
            drawn = scored[same & (scored["family"] == family) & (scored["mode"] == chosen["mode"])]
            distinct = drawn[~drawn["channels"].map(lambda c: tuple(sorted(c))).duplicated()]
            rows.append(_comparison(chosen, distinct, family, (low, high), int(members.sum()), len(drawn)))
    return pd.DataFrame(rows)


def _comparison(chosen: pd.Series, null: pd.DataFrame, family: str, interval, n_images: int, n_draws: int) -> dict:
    direction = DIRECTIONS[chosen["mode"]]
    change, specificity = null["accuracy_change"].to_numpy(), null["specificity"].to_numpy()
    empty = len(null) == 0
    return {
        "target": int(chosen["target"]),
        "k": int(chosen["k"]),
        "kind": chosen["kind"],
        "mode": chosen["mode"],
        "control": family,
        "channels": chosen["channels"],
        "accuracy": chosen["accuracy"],
        "accuracy_change": chosen["accuracy_change"],
        "change_low": interval[0],
        "change_high": interval[1],
        "other_change": chosen["other_change"],
        "specificity": chosen["specificity"],
        "null_mean": np.nan if empty else float(change.mean()),
        "null_low": np.nan if empty else float(np.percentile(change, 2.5)),
        "null_high": np.nan if empty else float(np.percentile(change, 97.5)),
        "p_value": np.nan if empty else empirical_p(chosen["accuracy_change"], change, direction),
        "p_specificity": np.nan if empty else empirical_p(chosen["specificity"], specificity, direction),
        "n_images": n_images,
        "n_draws": n_draws,
        "n_distinct": len(null),
    }


# ------------------------------------------------------------------------------------------- selectivity vs importance


def selectivity_importance(units: pd.DataFrame, *, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Spearman's rho over units between selectivity for a class and importance for it (the evaluation half's
    accuracy drop), per class and as the mean over classes; 95% intervals from resampling units."""
    selectivity = units.pivot(index="channel", columns="class", values="selectivity").to_numpy()
    importance = units.pivot(index="channel", columns="class", values="accuracy_drop").to_numpy()
    names = units.drop_duplicates("class").sort_values("class")["class_name"].tolist()
    rng = derived_rng(seed, "lesions/class/spearman")
    resamples = rng.integers(0, len(selectivity), size=(n_bootstrap, len(selectivity)))
    rho = np.array([spearman(selectivity[:, c], importance[:, c]) for c in range(len(names))])
    boot = np.array(
        [[spearman(selectivity[r, c], importance[r, c]) for c in range(len(names))] for r in resamples]
    )  # [B, K]
    with warnings.catch_warnings():  # a class without held-out images (tiny sets) has no rho: NaN, not an error
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(boot, 2.5, axis=0), np.nanpercentile(boot, 97.5, axis=0)
        mean_boot = np.nanmean(boot, axis=1)
    rows = [
        {"class_name": name, "rho": rho[c], "low": low[c], "high": high[c], "n_units": len(selectivity)}
        for c, name in enumerate(names)
    ]
    mean_row = {"class_name": "mean over classes", "rho": float(np.nanmean(rho)), "n_units": len(selectivity)}
    mean_row["low"], mean_row["high"] = np.nanpercentile(mean_boot, [2.5, 97.5])
    return pd.DataFrame([*rows, mean_row])


def pooled_comparison(scored: pd.DataFrame, *, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Per (set kind, k, mode, control family): the labelled sets' class-accuracy change averaged over classes (with
    a 95% bootstrap interval over classes), against the same average over the classes' control sets of one draw
    number (draws of different classes are independent, so each draw number is one sample of the null average);
    one-sided empirical p-value of the average."""
    rows = []
    labelled = scored[scored["family"] == "labelled"]
    for (kind, k, mode), chosen in labelled.groupby(["kind", "k", "mode"], sort=False):
        chosen = chosen[np.isfinite(chosen["accuracy_change"].to_numpy(dtype=np.float64))]  # classes with images
        changes = chosen["accuracy_change"].to_numpy(dtype=np.float64)
        rng = derived_rng(seed, f"lesions/class/pooled/{kind}/{k}/{mode}")
        low, high = bootstrap_interval(changes, rng, resamples=n_bootstrap)
        same = (scored["kind"] == kind) & (scored["k"] == k) & (scored["mode"] == mode)
        for family in ("random", "matched"):
            drawn = scored[same & (scored["family"] == family) & scored["target"].isin(chosen["target"])]
            null = drawn.groupby("draw")["accuracy_change"].mean().to_numpy(dtype=np.float64)
            empty = len(null) == 0
            rows.append(
                {
                    "kind": kind,
                    "k": int(k),
                    "mode": mode,
                    "control": family,
                    "n_classes": len(chosen),
                    "accuracy_change": float(changes.mean()),
                    "change_low": low,
                    "change_high": high,
                    "specificity": float(chosen["specificity"].mean()),
                    "null_mean": np.nan if empty else float(null.mean()),
                    "null_low": np.nan if empty else float(np.percentile(null, 2.5)),
                    "null_high": np.nan if empty else float(np.percentile(null, 97.5)),
                    "p_value": np.nan if empty else empirical_p(changes.mean(), null, DIRECTIONS[mode]),
                    "n_draws": len(null),
                }
            )
    return pd.DataFrame(rows)

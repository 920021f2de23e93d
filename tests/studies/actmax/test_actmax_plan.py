"""Parse time: each actmax rule's settings object, built from the validated config. Changing one key changes
exactly the settings of the rules whose results depend on it (so only those, and what follows them, re-run)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from conftest import DATA_DIR
from wfutil import study_config

from unitscope.config import validate_config
from unitscope.studies.actmax.plan import ActmaxPlan


def rule_settings(config: dict) -> dict:
    """Each rule's settings objects by the plan's field (`registry`: one per target)."""
    plan = ActmaxPlan.from_config(validate_config(copy.deepcopy(config)))
    return {field.name: getattr(plan, field.name) for field in dataclasses.fields(plan)}


@pytest.fixture(scope="module")
def tiny():
    """The study's tiny test config, validated (schema defaults filled in)."""
    return validate_config(study_config("actmax", DATA_DIR))


def test_settings_travel_through_params_unchanged(tiny):
    settings = rule_settings(tiny)
    objects = [value for name, value in settings.items() if name != "registry"] + list(settings["registry"].values())
    for value in objects:
        assert type(value).from_params(value.as_params()) == value
    assert settings["units"].layers == ("conv1", "conv3") and settings["optimization"].steps == 12
    assert settings["report"].registry == (("resnet20_cifar", "layer3"),)
    assert settings["analysis"].interpolation.lr == settings["optimization"].lr


@pytest.mark.parametrize(
    ("path", "value", "changed"),
    [
        (("seed",), 7, {"dataset", "training", "probe", "analysis"}),
        (("actmax", "dataset", "rho"), 0.9, {"dataset", "report"}),
        (("actmax", "dataset", "color_target"), "background", {"dataset"}),
        (("actmax", "training", "epochs"), 2, {"training"}),
        (("actmax", "units", "channels_per_layer"), 3, {"units", "report"}),
        (("actmax", "units", "extra_channels"), {"conv1": [4]}, {"units"}),
        (("actmax", "optimization", "steps"), 13, {"optimization", "report"}),
        (("actmax", "optimization", "class_weight"), 2.0, {"optimization"}),
        (("actmax", "optimization", "topk"), 3, {"optimization", "analysis"}),
        (("actmax", "analysis", "probe_groups"), 5, {"probe", "report"}),
        (("actmax", "analysis", "hue_bins"), 8, {"analysis"}),
        (("actmax", "analysis", "interpolation_steps"), 9, {"analysis", "report"}),
        (("actmax", "registry_targets", 0, "steps"), 4, {"registry"}),
        (("extraction", "batch_size"), 3, set()),  # a run-only setting changes no rule's settings
    ],
)
def test_a_changed_key_changes_exactly_its_rules_settings(tiny, path, value, changed):
    before = rule_settings(tiny)
    config = copy.deepcopy(tiny)
    where = config
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    after = rule_settings(config)
    assert {name for name in before if before[name] != after[name]} == changed

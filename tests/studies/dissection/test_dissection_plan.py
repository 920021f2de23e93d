"""Parse time: each dissection rule's settings object holds exactly the settings that change its results."""

from __future__ import annotations

import copy

import pytest
from conftest import DATA_DIR
from wfutil import study_config

from unitscope.config import validate_config
from unitscope.settings import SettingsError
from unitscope.studies.dissection.plan import (
    DissectSettings,
    RotationSettings,
    SectionSettings,
    UnitFigureSettings,
    dissection_plan,
)


@pytest.fixture(scope="module")
def config() -> dict:
    return validate_config(study_config("dissection", DATA_DIR))


def settings_objects(config: dict) -> dict[str, object]:
    """Every rule's settings by a name: `dissect/<model>`, `figure_units`, `rotation`, `section`."""
    built = dissection_plan(validate_config(copy.deepcopy(config)))
    named = {f"dissect/{model}": settings for model, settings in built.dissect.items()}
    return {**named, "figure_units": built.figure_units, "rotation": built.rotation, "section": built.section}


def changed(config: dict, edit) -> set[str]:
    """Names of the settings objects that differ once `edit` has changed a copy of the config."""
    other = copy.deepcopy(config)
    edit(other)
    before, after = settings_objects(config), settings_objects(other)
    assert before.keys() == after.keys()
    return {name for name in before if before[name] != after[name]}


def test_a_changed_setting_changes_only_the_settings_of_the_rules_it_affects(config):
    dissect = {"dissect/resnet20_cifar", "dissect/mobilenet_v2_imagenet"}
    assert changed(config, lambda c: c["dissection"].update(batch_size=3)) == set()  # run-only
    assert changed(config, lambda c: c["dissection"]["rotation"].update(alphas=[0, 1.0])) == {"rotation"}
    assert changed(config, lambda c: c["dissection"]["rotation"].update(mask_size=30)) == {"rotation", "section"}
    assert changed(config, lambda c: c["dissection"].update(figure_units=3)) == {"figure_units"}
    assert changed(config, lambda c: c["dissection"].update(top_images=3)) == dissect | {"section"}
    assert changed(config, lambda c: c["dissection"].update(mask_size=30)) == dissect
    assert changed(config, lambda c: c["dissection"].update(iou_threshold=0.05)) == dissect | {"rotation", "section"}
    everything = dissect | {"figure_units", "rotation", "section"}
    assert changed(config, lambda c: c["dissection"].update(quantile=0.01)) == everything
    assert changed(config, lambda c: c["dissection"]["concepts"].update(size=5)) == everything - {"section"}
    assert changed(config, lambda c: c.update(seed=1)) == everything - {"section"}
    layers = changed(config, lambda c: c["dissection"]["targets"][0].update(layers=["layer1"]))
    assert layers == {"dissect/resnet20_cifar"}


def test_settings_survive_params_and_stale_params_are_one_line(config):
    built = dissection_plan(config)
    for kind, settings in [
        (DissectSettings, built.dissect["resnet20_cifar"]),
        (UnitFigureSettings, built.figure_units),
        (RotationSettings, built.rotation),
        (SectionSettings, built.section),
    ]:
        assert kind.from_params(settings.as_params()) == settings
    assert built.dissect["resnet20_cifar"].layers == ("layer1", "layer3")
    assert built.dissect["resnet20_cifar"].concepts.spec["size"] == 6
    assert built.section.rotation_mask_size == 45 and built.section.color_concepts
    stale = {key: value for key, value in built.rotation.as_params().items() if key != "seeds"}
    with pytest.raises(SettingsError, match="RotationSettings: params have keys"):
        RotationSettings.from_params(stale)


def test_without_the_rotation_experiment_no_rule_gets_its_settings(config):
    off = copy.deepcopy(config)
    off["dissection"]["rotation"]["enabled"] = False
    built = dissection_plan(off)
    assert built.rotation is None and built.section.rotation_mask_size is None
    off["dissection"]["rotation"]["seeds"] = 5
    assert dissection_plan(off) == built

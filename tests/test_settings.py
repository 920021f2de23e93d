"""The settings pattern: frozen dataclasses that travel through a rule's params and come back equal."""

import dataclasses

import pytest

from unitscope.settings import ModelRef, Settings, SettingsError


def test_settings_round_trip_through_params_and_name_a_stale_key():
    """A stage's settings go to its rule as plain data and come back equal, nested and frozen; params from an
    older run with another shape are one line naming the settings class."""

    @dataclasses.dataclass(frozen=True)
    class Inner(Settings):
        levels: tuple

    @dataclasses.dataclass(frozen=True)
    class Outer(Settings):
        inner: Inner
        seed: int

    settings = Outer(inner=Inner(levels=(0.8, 0.9)), seed=3)
    params = settings.as_params()
    assert params == {"inner": {"levels": (0.8, 0.9)}, "seed": 3}
    params["inner"]["levels"] = [0.8, 0.9]  # as YAML or a pickle round trip may give it
    assert Outer.from_params(params) == settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 4
    with pytest.raises(SettingsError, match=r"Outer: params have keys \['seed'\], expected \['inner', 'seed'\]"):
        Outer.from_params({"seed": 3})
    config = {
        "data_dir": "../shared/data/",
        "resources_dir": "resources",
        "models": {"m": {"arch": "a", "enabled": True}},
    }
    ref = ModelRef.from_config(config, "m")
    assert ref == ModelRef(name="m", spec={"arch": "a"}, data_dir="../shared/data", torch_home="resources/torch")
    assert ModelRef.from_params(ref.as_params()) == ref

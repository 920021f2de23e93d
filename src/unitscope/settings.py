"""The settings pattern: every stage's result-changing settings as one frozen dataclass.

Built once at parse time from the validated config (a `from_config` classmethod in the study's plan.py), handed
to its rule whole as one `params:` entry and rebuilt by the stage's script. A module of its own (not config.py)
so that a stage's code inputs hold these few lines, not the config validation.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping

from unitscope.errors import UnitscopeError


class SettingsError(UnitscopeError, ValueError):
    """A rule's params do not fit its settings class (e.g. results of an older version); one line."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every stage's settings: a frozen dataclass built once at parse time from the validated config (a
    `from_config` classmethod in the study's plan.py), handed to its rule whole as one `params:` entry
    (`as_params`, plain data Snakemake compares between runs) and rebuilt by the stage (`from_params`). A rule gets
    only the settings that change its results, so changing one re-runs that rule and what depends on it."""

    def as_params(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: Mapping):
        names = [field.name for field in dataclasses.fields(cls)]
        if set(params) != set(names):
            raise SettingsError(
                f"{cls.__name__}: params have keys {sorted(params)}, expected {sorted(names)} (re-run the rule)"
            )
        hints = typing.get_type_hints(cls)
        return cls(**{name: _settings_value(hints[name], params[name]) for name in names})


def _settings_value(kind, value):
    """A nested Settings from its dict; lists as tuples (frozen all the way down); anything else as given."""
    if isinstance(kind, type) and issubclass(kind, Settings) and isinstance(value, Mapping):
        return kind.from_params(value)
    if isinstance(value, list):
        return tuple(_settings_value(None, item) for item in value)
    return value


@dataclasses.dataclass(frozen=True)
class ModelRef(Settings):
    """Which model a stage builds: its name, its registry entry (minus `enabled`, which changes no result), where
    relative checkpoint paths resolve (`data_dir`) and the torch hub cache (`torch_home`)."""

    name: str
    spec: dict
    data_dir: str
    torch_home: str

    @classmethod
    def from_config(cls, config: Mapping, name: str) -> ModelRef:
        spec = {key: value for key, value in config["models"][name].items() if key != "enabled"}
        data_dir = os.path.normpath(config["data_dir"])
        torch_home = os.path.join(os.path.normpath(config["resources_dir"]), "torch")
        return cls(name=name, spec=spec, data_dir=data_dir, torch_home=torch_home)

"""Command line: `python -m unitscope layers <model>` prints every addressable module of a registry model with its
output shape and channels, and marks the layers the studies use by default. (`facts` is the parse-time survey
the workflow runs in a subprocess; see `unitscope.models.facts`.)"""

from __future__ import annotations

import argparse
import difflib
import json
import sys

from unitscope.errors import UnitscopeError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unitscope", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    layers = commands.add_parser("layers", help="every module of a registry model, its output shape and channels")
    layers.add_argument("model", help="a key of `models` in the config")
    layers.add_argument("--configfile", default="config/config.yaml")
    layers.add_argument("--json", action="store_true", help="print the survey as JSON")
    facts = commands.add_parser("facts", help="(internal) the parse-time survey of one registry entry, as JSON")
    facts.add_argument("model")
    facts.add_argument("--spec", required=True, help="the registry entry as JSON")
    return parser


def _config_model(configfile: str, model: str) -> tuple[dict, dict]:
    from unitscope.config import read_yaml, validate_config

    config = validate_config(read_yaml(configfile))
    if model not in config["models"]:
        close = difflib.get_close_matches(model, list(config["models"]), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(config["models"])
        raise UnitscopeError(f"{configfile}: no model {model!r} under models{hint} (models: {known})")
    return config, config["models"][model]


def _print_table(facts: dict) -> None:
    marks = {name: "probe depth" for name in facts["probe_layers"]}
    if facts.get("last_block"):
        marks[facts["last_block"]] = "default layer (last block)" + (
            ", probe depth" if facts["last_block"] in facts["probe_layers"] else ""
        )
    rows = [("layer", "type", "output", "channels", "")]
    for row in facts["layers"]:
        shape = "x".join(str(s) for s in row["shape"]) if row["shape"] else "-"
        rows.append((row["name"], row["type"], shape, str(row["channels"] or "-"), marks.get(row["name"], "")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"model {facts['model']}: input {'x'.join(map(str, facts['input']))}, {len(facts['layers'])} modules")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)), row[4])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from unitscope.models.facts import compute_facts

        if args.command == "facts":
            print(json.dumps(compute_facts(args.model, json.loads(args.spec))))
            return 0
        _, spec = _config_model(args.configfile, args.model)
        facts = compute_facts(args.model, spec)
        try:
            print(json.dumps(facts, indent=1)) if args.json else _print_table(facts)
        except BrokenPipeError:  # `| head`
            sys.stdout = None
        return 0
    except UnitscopeError as err:
        print(f"unitscope: {err}", file=sys.stderr)
        return 2

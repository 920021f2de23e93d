"""The report: one offline HTML page (figures as files beside it) and results/summary.json.

Later studies contribute sections and headline numbers; this module states only what the
numbers show, with the sample sizes they rest on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from unitscope.fsutil import atomic_path, write_text_atomic
from unitscope.report.cost import cost_by_stage, read_benchmarks
from unitscope.report.render import environment, fixed, num, pct
from unitscope.report.sections import html_table, read_section, unit_href, unit_page_name


def dataset_summary(name: str, manifest: pd.DataFrame) -> dict:
    included = manifest[manifest["included"]]
    excluded = manifest[~manifest["included"]]
    return {
        "name": name,
        "category": str(manifest["category"].iloc[0]) if len(manifest) else "",
        "drawn": len(manifest),
        "included": len(included),
        "excluded": len(excluded),
        "labels": {str(k): int(v) for k, v in included["label"].value_counts().sort_index().items()},
        "exclusions": [{"path": str(row.path), "reason": str(row.exclude_reason)} for row in excluded.itertuples()],
    }


def extraction_summary(store_path: str | os.PathLike) -> dict:
    """Headline numbers of one activation store (reads only the [N, C] means)."""
    import zarr  # local: keeps `import unitscope.report.landing` light for tests that only render

    group = zarr.open_group(store=str(store_path), mode="r")
    means = np.asarray(group["means"][:])
    attrs = dict(group.attrs)
    channel_mean = means.mean(axis=0)
    return {
        "store": str(store_path),
        "model": attrs.get("model"),
        "dataset": attrs.get("dataset"),
        "layer": attrs.get("layer"),
        "n_images": int(means.shape[0]),
        "n_channels": int(means.shape[1]),
        "map_shape": attrs.get("map_shape"),
        "mean_activation": float(means.mean()),
        "dead_channels": int((np.abs(means).max(axis=0) == 0).sum()),
        "top_channels": [int(c) for c in np.argsort(channel_mean)[::-1][:5]],
        "device": attrs.get("device"),
        "package_versions": attrs.get("package_versions", {}),
    }


def collect_units(studies: list[dict]) -> list[dict]:
    """Join what every study says about each unit: one entry per (model, layer, channel), studies in order."""
    joined: dict[tuple, dict] = {}
    for study in studies:
        for unit in study.get("units", []):
            key = (unit["model"], unit["layer"], int(unit["channel"]))
            entry = joined.setdefault(
                key,
                {
                    "model": key[0],
                    "layer": key[1],
                    "channel": key[2],
                    "href": unit_href(*key),
                    "page": unit_page_name(*key),
                    "studies": [],
                },
            )
            entry["studies"].append(
                {
                    "study": study["study"],
                    "title": study["title"],
                    "facts": unit.get("facts", {}),
                    "images": unit.get("images", []),
                }
            )
    return sorted(joined.values(), key=lambda u: (u["model"], u["layer"], u["channel"]))


def run_summary(
    datasets: list[dict], models: list[dict], extractions: list[dict], studies: list[dict], versions
) -> dict:
    """results/summary.json: the headline numbers of the run, each study's under its name."""
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "datasets": {d["name"]: {k: d[k] for k in ("category", "drawn", "included", "excluded")} for d in datasets},
        "models": {
            m["name"]: {
                "parameters": m.get("parameters"),
                "accuracy": (m.get("eval") or {}).get("top1"),
                "accuracy_n": (m.get("eval") or {}).get("n"),
            }
            for m in models
        },
        "extraction": {
            f"{e['model']}/{e['dataset']}/{e['layer']}": {
                k: e[k] for k in ("n_images", "n_channels", "mean_activation", "dead_channels")
            }
            for e in extractions
        },
        **{study["study"]: study["summary"] for study in studies},
        "claims": [claim for study in studies for claim in study.get("claims", [])],
        "package_versions": versions,
    }


def datasets_table(datasets: list[dict]):
    frame = pd.DataFrame(
        {
            "dataset": [d["name"] for d in datasets],
            "category": [d["category"] for d in datasets],
            "drawn": [d["drawn"] for d in datasets],
            "included": [d["included"] for d in datasets],
            "excluded": [d["excluded"] for d in datasets],
            "labels (included)": [", ".join(f"{k}: {v}" for k, v in d["labels"].items()) for d in datasets],
        }
    )
    return html_table(frame)


def activations_table(extractions: list[dict]):
    frame = pd.DataFrame(
        {
            "model": [e["model"] for e in extractions],
            "dataset": [e["dataset"] for e in extractions],
            "layer": [e["layer"] for e in extractions],
            "images": [e["n_images"] for e in extractions],
            "channels": [e["n_channels"] for e in extractions],
            "map": [str(e["map_shape"]) if e["map_shape"] else "means only" for e in extractions],
            "mean activation": [num(e["mean_activation"], 4) for e in extractions],
            "never-active channels": [e["dead_channels"] for e in extractions],
            "top channels": [", ".join(map(str, e["top_channels"])) for e in extractions],
        }
    )
    return html_table(frame)


def cost_table(cost: list[dict]):
    """Per stage (the last row of `cost`, the total, is stated in the text): jobs, time, memory, slowest job."""
    total = cost[-1]["wall_s"]
    rows = cost[:-1]
    frame = pd.DataFrame(
        {
            "stage": [r["stage"] for r in rows],
            "jobs": [r["jobs"] for r in rows],
            "job time (s)": [fixed(r["wall_s"], 1) for r in rows],
            "share": [pct(r["wall_s"] / total, 0) if total else "" for r in rows],
            "CPU time (s)": [fixed(r["cpu_s"], 1) for r in rows],
            "CPU / job time": [fixed(r["cpu_s"] / r["wall_s"]) if r["wall_s"] else "" for r in rows],
            "peak memory (MB)": [fixed(r["peak_rss_mb"], 0) for r in rows],
            "slowest job": [f"{r['slowest']} ({fixed(r['slowest_s'], 1)} s)" for r in rows],
        }
    )
    return html_table(frame)


def claims_table(studies: list[dict]):
    """Claims and their evidence: every claim a study makes about a unit set, with the intervention behind it."""
    titles = {study["study"]: study["title"] for study in studies}
    claims = [claim for study in studies for claim in study.get("claims", [])]
    if not claims:
        return ""
    frame = pd.DataFrame(
        {
            "study": [titles[c["study"]] for c in claims],
            "claim": [c["claim"] for c in claims],
            "intervention": [c["intervention"] for c in claims],
            "effect [95%]": [c["effect"] for c in claims],
            "controls (mean)": [c["controls"] for c in claims],
            "p": [c["p"] for c in claims],
            "N": [c["n"] for c in claims],
            "verdict": ["shown" if c["shown"] else "not shown (null result)" for c in claims],
        }
    )
    return html_table(frame, links={"study": [f"#{c['study']}" for c in claims]})


def units_table(units: list[dict]):
    """The unit index: one row per unit page (links relative to results/report/units/)."""
    frame = pd.DataFrame(
        {
            "model": [u["model"] for u in units],
            "layer": [u["layer"] for u in units],
            "channel": [u["channel"] for u in units],
            "studies": [", ".join(e["title"] for e in u["studies"]) for u in units],
        }
    )
    return html_table(frame, fold_after=None, links={"channel": [u["page"] for u in units]})


def atlas_layers(index_path: str | os.PathLike | None, html_dir: Path) -> list[dict]:
    """The atlas's layers (results/atlas/index.json), each with its unit count and its index page's link relative
    to the report's folder; none when the atlas is off."""
    if not index_path:
        return []
    index = json.loads(Path(index_path).read_text())
    atlas_root = Path(index_path).parent
    return [
        {
            "model": layer["model"],
            "layer": layer["layer"],
            "units": int(layer["units"]),
            "href": os.path.relpath(atlas_root / layer["model"] / layer["layer"] / "index.html", html_dir),
        }
        for layer in index["layers"]
    ]


def link_atlas_pages(units: list[dict], layers: list[dict]) -> None:
    """Give each unit page of an atlas layer the link to the unit's atlas page (from results/report/units/)."""
    folders = {(layer["model"], layer["layer"]): Path(layer["href"]).parent for layer in layers}
    for unit in units:
        folder = folders.get((unit["model"], unit["layer"]))
        if folder is not None:
            unit["atlas_href"] = str(Path("..") / folder / "units" / f"{unit['channel']}.html")


def atlas_table(layers: list[dict]):
    frame = pd.DataFrame(
        {
            "model": [layer["model"] for layer in layers],
            "layer": [layer["layer"] for layer in layers],
            "units": [layer["units"] for layer in layers],
            "atlas": ["browse every unit" for _ in layers],
        }
    )
    return html_table(frame, fold_after=None, links={"atlas": [layer["href"] for layer in layers]})


def write_unit_pages(folder: Path, units: list[dict]) -> None:
    """Every unit's page and the unit index (index.html) into `folder`, written whole then renamed."""
    unit_template = environment().get_template("unit.html.j2")
    with atomic_path(folder) as temp:
        temp.mkdir()
        for unit in units:
            (temp / unit["page"]).write_text(unit_template.render(unit=unit))
        index = environment().get_template("units_index.html.j2").render(units=units, unit_table=units_table(units))
        (temp / "index.html").write_text(index)


def build_report(
    *,
    manifests: dict[str, str | os.PathLike],
    cards: dict[str, str | os.PathLike],
    stores: list[str | os.PathLike],
    figures: dict[str, str | os.PathLike],
    sections: list[str | os.PathLike] = (),
    config: dict,
    html_path: str | os.PathLike,
    summary_path: str | os.PathLike,
    units_dir: str | os.PathLike | None = None,
    benchmarks_dir: str | os.PathLike | None = None,
    atlas: Sequence[str | os.PathLike] = (),
) -> dict:
    """Write the HTML report (findings first: each study's answer and card, then the sections, then the run's
    data, models, activations and cost), the unit pages with their index, and the machine-readable summary;
    return the summary. `benchmarks_dir` holds Snakemake's per-job benchmark files, summed per stage; `atlas` is
    the atlas's index.json when the atlas is on (its layers are listed, and unit pages link to their atlas pages)."""
    html_path = Path(html_path)
    datasets = [dataset_summary(name, pd.read_parquet(path)) for name, path in manifests.items()]
    models = [json.loads(Path(path).read_text()) for path in cards.values()]
    extractions = [extraction_summary(path) for path in stores]
    studies = [read_section(path) for path in sections]
    units = collect_units(studies)
    layers = atlas_layers(atlas[0] if atlas else None, html_path.parent)
    link_atlas_pages(units, layers)
    versions = extractions[0]["package_versions"] if extractions else {}
    summary = run_summary(datasets, models, extractions, studies, versions)
    if layers:
        summary["atlas"] = {
            "units": sum(x["units"] for x in layers),
            "layers": [f"{x['model']}/{x['layer']}" for x in layers],
        }
    relative_figures = {key: os.path.relpath(path, html_path.parent) for key, path in figures.items()}
    for e in extractions:
        e["figure"] = relative_figures.get(f"activations/{e['model']}/{e['dataset']}/{e['layer']}")
    cost = cost_by_stage(read_benchmarks(benchmarks_dir)) if benchmarks_dir else []
    tables = {
        "datasets": datasets_table(datasets),
        "activations": activations_table(extractions),
        "cost": cost_table(cost) if cost else "",
        "claims": claims_table(studies),
        "atlas": atlas_table(layers) if layers else "",
    }
    html = (
        environment()
        .get_template("report.html.j2")
        .render(
            summary=summary,
            datasets=datasets,
            models=models,
            extractions=extractions,
            studies=studies,
            units=units,
            atlas=layers,
            figures=relative_figures,
            tables=tables,
            config_yaml=yaml.safe_dump(config, sort_keys=False),
            versions=versions,
            cost=cost,
        )
    )
    write_text_atomic(html_path, html)
    write_unit_pages(Path(units_dir or html_path.parent / "units"), units)
    with atomic_path(summary_path) as temp:
        temp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary

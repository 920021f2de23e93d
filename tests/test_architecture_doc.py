"""docs/architecture.md's "How to add a study", followed literally: every file it shows is written into a copy of
the workflow, and the new study runs end to end into the report."""

from __future__ import annotations

import json
import re

import pytest
from wfutil import REPO, copy_workflow, disable_studies, planned_jobs, snakemake, tiny_config, write_config

pytestmark = pytest.mark.integration
BLOCK = re.compile(r"^```\w+ (file|append)=(\S+)\n(.*?)^```$", re.S | re.M)


def follow_the_doc(workdir) -> list[str]:
    """Write (or append) each block of the doc into `workdir`; return the paths it names."""
    paths = []
    for action, path, text in BLOCK.findall((REPO / "docs" / "architecture.md").read_text()):
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a" if action == "append" else "w") as handle:
            handle.write(text)
        paths.append(path)
    return paths


def test_adding_a_study_as_the_doc_says(tmp_path, data_dir):
    workdir = copy_workflow(tmp_path / "wf")
    written = follow_the_doc(workdir)
    assert "rules/example.smk" in written and "src/unitscope/studies/example/stages.py" in written
    config = disable_studies(tiny_config(data_dir))
    config["models"] = {"resnet20_cifar": config["models"]["resnet20_cifar"]}
    config["extraction"]["targets"] = []
    config["example"] = {"enabled": True}
    write_config(workdir, config)
    snakemake(workdir, "report")
    summary = json.loads((workdir / "results" / "summary.json").read_text())["example"]
    channel = summary["top_channels"]["objects"]
    assert 0 <= channel < 64  # resnet20 layer3 has 64 channels
    html = (workdir / "results" / "report" / "index.html").read_text()
    assert "Most active channels" in html and f"channel {channel} is the most active" in html
    assert (workdir / "results" / "report" / "units" / f"resnet20_cifar__layer3__{channel}.html").is_file()
    template = workdir / "src" / "unitscope" / "studies" / "example" / "templates" / "example.html.j2"
    template.write_text(template.read_text() + "<p>One more sentence.</p>\n")
    assert planned_jobs(workdir) == {("example_section", ""), ("report", "")}  # a template is code too

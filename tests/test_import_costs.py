"""Jobs that only read tables and write figures, sections or the report start without torch (issue 15).

Every Snakemake job is a fresh Python process, and importing torch, torchvision, sklearn or scipy takes seconds:
more than such a job's work. This imports what each table-only workflow script imports, in one fresh
interpreter, and names the first module that pulls a heavy package in.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"
HEAVY = ("torch", "torchvision", "sklearn", "scipy")
TABLE_ONLY = (
    "actmax_report",
    "atlas_categories",
    "atlas_gather",
    "atlas_index",
    "atlas_pages",
    "dissection_section",
    "extract_store",
    "faces_categories",
    "faces_interventions_figure",
    "faces_pca",
    "faces_section",
    "faces_selection",
    "figure_activations",
    "figure_datasets",
    "manifest",
    "nefesi_layer_figures",
    "nefesi_model_figures",
    "report",
)
PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
heavy, found = json.loads(sys.argv[2]), {}
for module in json.loads(sys.argv[3]):
    importlib.import_module(module)
    for name in heavy:
        if name in sys.modules and name not in found:
            found[name] = module
print(json.dumps(found))
"""


def script_modules(script: str) -> list[str]:
    """The package modules `workflow/scripts/<script>.py` imports (its `from unitscope... import` lines)."""
    tree = ast.parse((SCRIPTS / f"{script}.py").read_text())
    return [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "unitscope"
    ]


def test_table_only_scripts_import_no_heavy_package():
    per_script = {script: script_modules(script) for script in TABLE_ONLY}
    assert all(per_script.values()), per_script  # each script imports its stage and unitscope.logs
    modules = list(dict.fromkeys(module for modules in per_script.values() for module in modules))
    args = [str(ROOT / "src"), json.dumps(HEAVY), json.dumps(modules)]
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    pulled = json.loads(result.stdout)
    assert pulled == {}, f"imported by (the first module that pulls it in): {pulled}"

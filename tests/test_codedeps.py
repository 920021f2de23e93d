from pathlib import Path

from unitscope.codedeps import module_closure


def names(paths):
    return {Path(p).name for p in paths}


def test_extract_depends_on_what_it_imports_transitively():
    closure = names(module_closure("unitscope.extract"))
    assert {"extract.py", "hooks.py", "registry.py", "manifest.py", "download.py", "fsutil.py"} <= closure
    assert "landing.py" not in closure and "config.py" not in closure


def test_report_does_not_depend_on_extraction_code():
    closure = names(module_closure("unitscope.report.landing"))
    assert "landing.py" in closure and "extract.py" not in closure and "hooks.py" not in closure


def test_closure_follows_a_new_import(tmp_path):
    package = tmp_path / "unitscope"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from unitscope.b import thing\n")
    (package / "b.py").write_text("import os\nfrom unitscope import c\n")
    (package / "c.py").write_text("thing = 1\n")
    (package / "d.py").write_text("")
    assert names(module_closure("unitscope.a", package)) == {"a.py", "b.py", "c.py", "__init__.py"}

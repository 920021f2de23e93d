import json
from pathlib import Path

from unitscope.codedeps import entry_closure, module_closure


def names(paths):
    return {Path(p).name for p in paths}


def test_extract_depends_on_what_it_imports_transitively():
    closure = names(module_closure("unitscope.extract"))
    assert {"extract.py", "hooks.py", "registry.py", "manifest.py", "download.py", "fsutil.py"} <= closure
    assert "landing.py" not in closure and "config.py" not in closure
    assert "settings.py" in closure  # a stage names its settings, not the config validation


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


def test_entry_closure_follows_only_what_the_function_uses(tmp_path):
    package = tmp_path / "unitscope"
    (package / "templates").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "heavy.py").write_text("x = 1\n")
    (package / "light.py").write_text("y = 2\n")
    (package / "report").mkdir()
    (package / "report" / "__init__.py").write_text("")
    (package / "report" / "render.py").write_text("def render(name):\n    return name\n")
    (package / "templates" / "page.html.j2").write_text("{{ x }}\n")
    (package / "stages.py").write_text(
        "from unitscope.heavy import x\nfrom unitscope.light import y\n\n"
        "def _helper():\n    return y\n\n"
        "def run_light():\n    return _helper()\n\n"
        "def run_heavy():\n    from unitscope.report.render import render\n    return x, render('page.html.j2')\n"
    )
    light = names(entry_closure("unitscope.stages:run_light", package))
    heavy = names(entry_closure("unitscope.stages:run_heavy", package))
    assert light == {"stages.py", "light.py"}  # through the file's own helper; heavy.py is not needed
    assert heavy == {"stages.py", "heavy.py", "render.py", "page.html.j2"}  # a lazy import; the template it renders


def test_imports_for_annotations_only_are_not_dependencies(tmp_path):
    package = tmp_path / "unitscope"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "big.py").write_text("class Big: ...\n")
    (package / "user.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from unitscope.big import Big\n\n"
        "def draw(x: 'Big') -> None:\n    return None\n"
    )
    assert names(module_closure("unitscope.user", package)) == {"user.py"}


def _package(tmp_path):
    package = tmp_path / "unitscope"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from unitscope.b import thing\n")
    (package / "b.py").write_text("thing = 1\n")
    return package


def test_a_cache_file_gives_the_same_closures_and_a_tampered_one_is_ignored(tmp_path):
    from unitscope import codedeps

    package, cache_file = _package(tmp_path), tmp_path / "cache" / "codedeps.json"
    first = codedeps.FactsCache()
    first.use_file(cache_file)
    expected = first.facts(package / "a.py")
    first.save()
    assert json.loads(cache_file.read_text())["entries"], "the facts were written"

    second = codedeps.FactsCache()
    second.use_file(cache_file)
    assert second.facts(package / "a.py") == expected and not second.changed  # read, not parsed again

    stored = json.loads(cache_file.read_text())
    for entry in stored["entries"].values():
        entry["imports"] = "unitscope.elsewhere"  # not a list of strings: ignored, recomputed
    cache_file.write_text(json.dumps(stored))
    third = codedeps.FactsCache()
    third.use_file(cache_file)
    assert third.facts(package / "a.py") == expected and third.changed
    cache_file.write_text("{not json")
    fourth = codedeps.FactsCache()
    fourth.use_file(cache_file)
    assert fourth.facts(package / "a.py") == expected


def test_an_edited_module_gets_new_facts(tmp_path):
    from unitscope import codedeps

    package = _package(tmp_path)
    facts = codedeps.FactsCache()
    assert facts.facts(package / "a.py")["imports"] == ["unitscope.b", "unitscope.b.thing"]
    (package / "a.py").write_text("import unitscope.c\n")  # another size: another version of the file
    assert facts.facts(package / "a.py")["imports"] == ["unitscope.c"]

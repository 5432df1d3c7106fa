"""pyproject.toml installs every module of sgm (and its data file) and offers the optional parts as extras;
requirements.txt lists nothing the code does not import."""
import ast
import os
import tomllib

from setuptools import find_packages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_every_sgm_module_and_data_file_is_packaged():
    spec = pyproject()["tool"]["setuptools"]
    packages = set(find_packages(ROOT, include=spec["packages"]["find"]["include"]))
    folders = {os.path.relpath(d, ROOT).replace(os.sep, ".") for d, _, files in os.walk(os.path.join(ROOT, "sgm"))
               if any(f.endswith(".py") for f in files)}
    assert folders <= packages, sorted(folders - packages)
    import glob
    data = [p for pattern in spec["package-data"]["sgm"] for p in glob.glob(os.path.join(ROOT, "sgm", pattern))]
    assert data, spec["package-data"]


def test_optional_parts_are_extras():
    extras = pyproject()["project"]["optional-dependencies"]
    assert {"lora", "diffusers", "video"} <= set(extras)
    assert any(r.startswith("peft==") for r in extras["lora"])


def imported_top_level_names() -> set[str]:
    names = set()
    for folder in ("sgm", "scripts", "tests"):
        for d, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in (f for f in files if f.endswith(".py")):
                tree = ast.parse(open(os.path.join(d, f)).read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                        names.add(node.module.split(".")[0])
    tree = ast.parse(open(os.path.join(ROOT, "main.py")).read())
    names |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names


def test_fire_is_not_required_and_not_imported():
    requirements = open(os.path.join(ROOT, "requirements.txt")).read().split()
    assert not any(r.startswith("fire") for r in requirements)
    assert "fire" not in imported_top_level_names()

"""binder/: what mybinder.org (repo2docker) installs opens notebooks/ with everything working.

With a binder/ folder, repo2docker does not install the root pyproject.toml: it runs `pip install
-r binder/requirements.txt` from the repository's root once the repository is copied (a line
starting with "." is a local requirement, installed after the copy). So that file must install
the project itself, and, with the project's own dependencies, everything the notebooks import.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "binder" / "requirements.txt"
# import name -> the distribution that provides it, where they differ
PROVIDED_AS = {"dask": "dask", "distributed": "distributed", "IPython": "ipython", "nbbuild": "nbbuild"}


def requirement_lines() -> list[str]:
    return [line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


def distributions() -> set[str]:
    """What binder's requirements install: their names, the project's dependencies and extras."""
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for line in requirement_lines():
        if line.startswith("."):
            names.add(project["name"])
            extras = re.findall(r"\[([^\]]*)\]", line)
            for extra in (extras[0].split(",") if extras else []):
                names.update(project["optional-dependencies"][extra.strip()])
        else:
            names.add(line)
    names.update(project["dependencies"])
    return {re.split(r"[<>=!;\[ ]", n, maxsplit=1)[0].strip().lower() for n in names}


def notebook_imports() -> set[str]:
    found = set()
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Import):
                    found.update(a.name.partition(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.partition(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names}


def test_binder_installs_the_project_itself_from_the_repository_root():
    local = [line for line in requirement_lines() if line.startswith(".")]
    assert len(local) == 1 and re.fullmatch(r"\.(\[[\w,]+\])?", local[0])
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                          "-r", str(REQUIREMENTS.relative_to(ROOT))], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"Would install .*\bnbbuild-", out.stdout), out.stdout


def test_everything_the_notebooks_import_is_installed():
    imports = notebook_imports()
    assert {"pandas", "numpy", "matplotlib", "dask"} <= imports     # the check sees them (nbbuild: %load_ext)
    missing = {name for name in imports if PROVIDED_AS.get(name, name).lower() not in distributions()}
    assert not missing, f"binder/requirements.txt does not install {sorted(missing)}"


def test_binder_pins_a_python_nbbuild_supports():
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.(1[0-9])", runtime)
    assert int(runtime.split(".")[1]) >= 10

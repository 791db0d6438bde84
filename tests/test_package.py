"""Namespace: installed, the project claims exactly one import name, ``plasticrl``.

The repository's folders (``networks``, ``buffers``, ``envs``, ...) are mapped to ``plasticrl.<folder>``;
none of them may become importable as a top-level name (they would collide with other packages), and
every subpackage must import.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_NOT_PACKAGES = {"tests", "runs", "data", "build", "dist"}


def _is_ignored_dir(path: Path) -> bool:
    return (
        path.name.startswith((".", "_")) or path.name.endswith(".egg-info") or (path / "pyvenv.cfg").exists()
    )


def repo_subpackages() -> list[str]:
    """Dotted names (below ``plasticrl``) of every folder with an ``__init__.py``, at any depth."""
    found = []
    for init in sorted(REPO.rglob("__init__.py")):
        rel = init.parent.relative_to(REPO)
        if rel == Path("."):
            continue
        if any(_is_ignored_dir(REPO.joinpath(*rel.parts[: i + 1])) for i in range(len(rel.parts))):
            continue
        if rel.parts[0] in _NOT_PACKAGES:
            continue
        found.append(".".join(rel.parts))
    return found


def top_level_folder_names() -> list[str]:
    """Repository folders that must not be importable as top-level names (code folders and tests)."""
    names = {p.name for p in REPO.iterdir() if p.is_dir() and not _is_ignored_dir(p) and any(p.glob("*.py"))}
    return sorted(
        names
        | {"agents", "networks", "envs", "buffers", "interventions", "supervised", "benchmarks", "tests"}
    )


def test_pyproject_maps_every_folder_into_the_one_namespace():
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"plasticrl": "."}
    expected = {"plasticrl"} | {f"plasticrl.{name}" for name in repo_subpackages()}
    assert set(config["packages"]) == expected


def _installed_distribution() -> importlib.metadata.Distribution:
    """The distribution pip installed into site-packages (not the build's ``plasticrl.egg-info`` in the
    repository root, which ``python -m pytest`` would find first through the current directory)."""
    site = sysconfig.get_paths()["purelib"]
    found = list(importlib.metadata.Distribution.discover(name="plasticrl", path=[site]))
    assert found, f"plasticrl is not installed in {site}"
    return found[0]


def test_distribution_declares_only_plasticrl():
    dist = _installed_distribution()
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        assert top_level.split() == ["plasticrl"]
    files = dist.files or []
    assert files, "the installed distribution lists no files (RECORD missing)"
    for f in files:
        first = f.parts[0]
        editable_artifact = first.startswith("__editable__") and "plasticrl" in first
        assert first in {"plasticrl", "__pycache__"} or first.endswith(".dist-info") or editable_artifact, (
            f"the distribution installs {f}, outside the plasticrl package"
        )
        if first.endswith(".pth"):
            # A path-style editable install would put the repository root itself on sys.path, making
            # every folder a top-level package; only the import-hook style keeps one name.
            lines = [ln for ln in f.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            assert all(ln.startswith("import ") for ln in lines), f"{f} adds a path to sys.path: {lines}"
        if first.startswith("__editable__") and first.endswith("_finder.py"):
            finder = importlib.import_module(first.removesuffix(".py"))
            assert set(finder.MAPPING) == {"plasticrl"}


_PROBE = """
import importlib, importlib.util, json, sys
top, subs = json.loads(sys.argv[1])
out = {"top": {}, "sub": {}, "errors": {}}
for name in top:
    spec = importlib.util.find_spec(name)
    if spec is None:
        out["top"][name] = []
    else:
        out["top"][name] = [spec.origin] if spec.origin else list(spec.submodule_search_locations or [])
import plasticrl
out["plasticrl"] = plasticrl.__file__
for name in subs:
    try:
        module = importlib.import_module("plasticrl." + name)
        out["sub"][name] = module.__file__
    except Exception as exc:  # report every failure, not only the first
        out["errors"][name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def _is_repo_folder(path: str, name: str) -> bool:
    try:
        rel = Path(path).resolve().relative_to(REPO)
    except ValueError:
        return False
    return bool(rel.parts) and rel.parts[0] in (name, f"{name}.py")


def test_only_plasticrl_is_importable_from_outside_the_repository(tmp_path):
    top = top_level_folder_names()
    subs = repo_subpackages()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([top, subs])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    # A same-named package from another distribution may exist (even in a venv inside the repository);
    # it must just not be the repository's own folder.
    leaked = {
        name: paths for name, paths in out["top"].items() if any(_is_repo_folder(p, name) for p in paths)
    }
    assert not leaked, f"repository folders importable as top-level names: {leaked}"

    assert not out["errors"], f"subpackages failing to import: {out['errors']}"
    package_dir = Path(out["plasticrl"]).parent
    for name in subs:
        origin = Path(out["sub"][name])
        assert origin.name == "__init__.py"
        assert origin.parent == package_dir.joinpath(*name.split(".")), (name, origin)


def test_version_matches_metadata():
    import plasticrl

    assert plasticrl.__version__ == importlib.metadata.version("plasticrl")

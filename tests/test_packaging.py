"""Packaging: the pack imports outside ComfyUI, the model package never imports ComfyUI, registry metadata."""

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFY_MODULES = {"comfy", "comfy_api", "folder_paths", "server", "nodes", "comfy_extras", "execution"}


def test_model_package_never_imports_comfyui():
    for path in (REPO / "omnisync_model").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in COMFY_MODULES, f"{path.name} imports {name}"


def test_import_model_package_in_a_clean_interpreter():
    code = "import sys, omnisync_model, omnisync_model.sampling.pipeline, omnisync_model.cli.main; " \
           "assert not any(m.split('.')[0] in {'comfy', 'comfy_api', 'folder_paths'} for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO.parent, timeout=120)


def test_pack_root_imports_outside_comfyui():
    """ComfyUI imports the pack root as a package; outside ComfyUI that must register nothing and not fail."""
    spec = importlib.util.spec_from_file_location("omnisync_pack_root", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not hasattr(module, "comfy_entrypoint")


def test_pyproject_registry_metadata():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and "requires-comfyui" in comfy
    assert meta["project"]["scripts"]["omnisync"] == "omnisync_model.cli:main"
    deps = " ".join(meta["project"]["dependencies"])
    assert "torchaudio" not in deps and "torchvision" not in deps


@pytest.mark.skipif(shutil.which("comfy") is None, reason="comfy-cli is not installed (pip install -e '.[dev]')")
def test_comfy_node_validate_passes():
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    proc = subprocess.run(["comfy", "--skip-prompt", "node", "validate"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in (proc.stdout + proc.stderr).lower()


def _requirement_names(lines):
    return sorted(line.split(";")[0].strip() for line in lines if line.strip() and not line.strip().startswith("#"))


def test_requirements_txt_matches_pyproject_without_torch():
    """ComfyUI-Manager installs requirements.txt into ComfyUI's Python: the same pins as pyproject, never torch."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    want = [d for d in meta["project"]["dependencies"] if not d.startswith("torch")]
    got = _requirement_names((REPO / "requirements.txt").read_text().splitlines())
    assert got == sorted(want), f"requirements.txt {got} != pyproject minus torch {sorted(want)}"
    assert not any(name.startswith(("torch", "torchvision", "torchaudio")) for name in got)


def test_model_files_import_no_sampling_media_or_nodes():
    """Model families depend on core/ only (and on their own sub-package)."""
    banned = ("sampling", "media", "backends", "training", "cli", "faces")
    for path in (REPO / "omnisync_model" / "families").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                assert node.module.split(".")[0] not in banned, f"{path.relative_to(REPO)} imports {node.module}"

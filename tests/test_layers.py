"""The package's layers point down the data flow, checked by import-linter.

The contracts live in pyproject.toml ([tool.importlinter]): train -> checkpoint -> the modality
registry and converters -> pictures, shard builder, loaders (independent of one another) ->
model -> masking -> tokenizers -> the shared formats and flags, which never import torch.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def lint_imports() -> str:
    found = Path(sys.executable).parent / "lint-imports"
    command = str(found) if found.exists() else shutil.which("lint-imports")
    if command is None:
        pytest.skip("import-linter is not installed (pip install 'modalmae[dev]')")
    return command


def test_imports_point_down_the_layers():
    result = subprocess.run([lint_imports(), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_tokenizer_importing_the_model_breaks_the_contract(tmp_path):
    # The checker itself: the same contracts on a copy of the package with one import going up.
    shutil.copytree(REPO / "modalmae", tmp_path / "modalmae", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "modalmae" / "tokenizers" / "positions.py", "a") as f:
        f.write("\nfrom modalmae.model import loss  # noqa: E402, F401\n")
    result = subprocess.run(
        [lint_imports(), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "modalmae.tokenizers.positions -> modalmae.model.loss" in result.stdout

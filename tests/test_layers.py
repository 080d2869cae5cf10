"""The architecture contract: light imports, and the import-linter layers contract holds."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_packages_import_without_torch():
    """Every module of the four packages imports without the heavy libraries (they load lazily)."""
    code = ("import importlib, pkgutil, sys\n"
            "for pkg in ('core', 'teacher', 'student', 'orchestration'):\n"
            "    for m in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "assert 'orchestration.train' in sys.modules and 'teacher.vllm_backend' in sys.modules\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'ray', 'vllm') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_import_linter_contract_holds():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports not installed: run `make setup` (it installs the dev extra)")
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

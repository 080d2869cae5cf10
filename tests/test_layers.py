"""The architecture contract: light imports, and the import-linter layers contract holds."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_packages_import_without_torch():
    code = ("import sys, teacher, student, orchestration, orchestration.core.catalog, orchestration.core.contexts, "
            "orchestration.core.queue, orchestration.core.rewards, orchestration.driver.train, orchestration.driver.launch, "
            "student.worker, teacher.prompts, teacher.backend, teacher.generate, teacher.rest_em, teacher.versions, "
            "orchestration.driver.cli, orchestration.driver.adapt, student.scoring, student.model, student.judge, "
            "orchestration.driver.ray_launch, orchestration.driver.ray_models, orchestration.core.domains, "
            "teacher.vllm_backend, student.vllm_answer\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'ray', 'vllm') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_import_linter_contract_holds():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports not installed: run `make setup` (it installs the dev extra)")
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

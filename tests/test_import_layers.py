"""The floors of the house hold: pyproject.toml's import-linter contracts, checked as CI checks them
(.ci/lint-imports, about 2 s), so the default run catches an import that runs upward."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_module_imports_from_a_floor_above_its_own():
    # Every layer is required and every module placed ("exhaustive"), so a contract that did not see
    # kic.components or kic.pipelines fails, and so does a new module without a floor.
    result = subprocess.run(["bash", os.path.join(ROOT, ".ci", "lint-imports"), sys.executable],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", result.stdout), result.stdout[-2000:]


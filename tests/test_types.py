"""The type checker on the contracts, the core and the policies: mypy in strict mode over the
files `[tool.mypy]` in pyproject.toml names (request.py, config.py, clock.py, latency_model.py,
core/, policies/), so a type error there fails the suite, and CI.

mypy is a development dependency (`.[dev]`, installed by scripts/setup.sh). Without it this
test fails, saying so, unless SLICESERVE_ALLOW_NO_MYPY=1 (then it is skipped).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("sliceserve/request.py", "sliceserve/config.py", "sliceserve/clock.py",
           "sliceserve/latency_model.py", "sliceserve/core", "sliceserve/policies")


def test_mypy_checks_what_the_issue_asked_for() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert tuple(config["files"]) == CHECKED


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        import mypy  # noqa: F401
    except ImportError:
        if os.environ.get("SLICESERVE_ALLOW_NO_MYPY") == "1":
            pytest.skip("mypy is not installed (SLICESERVE_ALLOW_NO_MYPY=1)")
        pytest.fail("mypy is not installed: `pip install -e '.[dev]'` (scripts/setup.sh does)")
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_the_core_and_the_policies_type_check_strictly() -> None:
    proc = mypy("--config-file", str(REPO / "pyproject.toml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_the_check_finds_a_type_error(tmp_path: Path) -> None:
    """The same settings report an untyped function and a wrong type: the check can fail."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x):\n    return x\n\n\nn: int = 'one'\n")
    proc = mypy("--strict", "--follow-imports=silent", str(bad))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no-untyped-def" in proc.stdout and "assignment" in proc.stdout

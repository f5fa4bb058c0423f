"""tests/deps.py: a missing test dependency skips on a developer's machine and fails in CI."""
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deps

HERE = Path(__file__).resolve().parent


def test_missing_skips_outside_ci_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(deps, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="no such module"):
        deps.require("gpugrad_no_such_module", "no such module")
    monkeypatch.setattr(deps, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match=r"CI: a test dependency is missing: no such module"):
        deps.require("gpugrad_no_such_module", "no such module")
    with pytest.raises(pytest.fail.Exception, match="CI: a test dependency is missing: g\\+\\+ is gone"):
        deps.need(False, "g++ is gone")
    deps.need(True, "never said")
    assert deps.require("json").dumps([]) == "[]"


def test_problems_name_each_missing_dependency(monkeypatch):
    real_find, real_which = importlib.util.find_spec, shutil.which
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("torch", "cupy")
                        else real_find(name, *a))
    monkeypatch.setattr(shutil, "which", lambda cmd, *a: None if cmd == "g++" else real_which(cmd, *a))
    found = deps.problems()
    assert "the module torch is not installed" in found and "the module cupy is not installed" in found
    assert "the kernel emulator needs g++ on PATH" in found


def test_a_ci_run_with_a_missing_dependency_fails_instead_of_skipping(tmp_path):
    """A test module that needs a module no one has: outside CI it is skipped; with CI set the run
    fails, naming what is missing."""
    (tmp_path / "test_needs.py").write_text(
        "import deps\nthing = deps.require('gpugrad_no_such_module', 'the thing is needed')\n\n"
        "def test_uses_it():\n    assert thing\n")
    runs = {}
    for ci in ("", "true"):
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(HERE), "CI": ci}
        runs[ci] = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                                   str(tmp_path / "test_needs.py")], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=120)
    assert "1 skipped" in runs[""].stdout and runs[""].returncode == 5, runs[""].stdout  # 5: none ran
    assert runs["true"].returncode != 0, runs["true"].stdout
    assert "CI: a test dependency is missing: the thing is needed" in runs["true"].stdout

"""The documentation site builds with warnings as errors, and its link check catches a broken link."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=config.parent)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    proc = _build(ROOT / "mkdocs.yml", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_site_has_quickstart_concepts_api_and_search(site):
    for page in ("quickstart", "concepts", "parsl", "troubleshooting", "hpc", "reliability", "security",
                 "benchmarks"):
        assert (site / page / "index.html").exists(), page
    api = (site / "api" / "index.html").read_text()
    # Generated from the docstrings: the executor's parameters and the progress module are there.
    assert "RadicalCylonExecutor" in api and "working_dir" in api and "show_progress" in api
    assert (site / "search" / "search_index.json").exists()
    assert (site / "results" / "paper" / "pipeline.png").exists(), "plots the pages link to are served"


def test_troubleshooting_covers_every_doctor_check():
    from parsl_rcylon.doctor import Doctor

    checks = [name[len("check_"):].replace("_", " ") for name in dir(Doctor) if name.startswith("check_")]
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert checks and all(f"| {c} |" in text for c in checks), [c for c in checks if f"| {c} |" not in text]


def test_a_broken_internal_link_fails_the_build(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    page = tmp_path / "docs" / "concepts.md"
    page.write_text(page.read_text() + "\nSee [the missing page](missing.md#nowhere).\n")
    # mkdocstrings reads the package from the copy's root: the API page needs it there.
    (tmp_path / "parsl_rcylon").symlink_to(ROOT / "parsl_rcylon")
    proc = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    assert "missing.md" in proc.stderr

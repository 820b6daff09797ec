"""The package layering the README states, checked by import-linter's contracts in
pyproject.toml: the media plane imports no web tier, nothing imports the composition
root, and signaling imports no media internals."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
COMPOSITION_ROOT = {"app", "__main__"}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_the_media_plane_contract_names_every_module_but_the_composition_root():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    media_plane = set(contracts["contracts"][0]["source_modules"])
    modules = {
        f"sfu.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "sfu").iterdir()
        if path.suffix == ".py" or (path / "__init__.py").is_file()
    } - {f"sfu.{name}" for name in (*COMPOSITION_ROOT, "__init__")}
    assert media_plane == modules


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("sfu/producer.py", "import fastapi", "The media plane imports no web tier"),
        ("signaling/ws.py", "import sfu.worker", "it imports no media internals"),
        ("sfu/room.py", "import sfu.app.cli", "Nothing imports the composition root"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, contract):
    for name in ("sfu", "signaling"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / module).open("a") as source:
        source.write(f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), result.stdout

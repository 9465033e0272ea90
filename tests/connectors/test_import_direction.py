"""Imports run one way: etlcore uses connectors, warehouse and spark_jobs; none of them imports etlcore."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in a file, relative ones included (they stay inside the package)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", ["connectors", "warehouse", "spark_jobs"])
def test_package_never_imports_etlcore(package):
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in _imported_modules(path)
        if module == "etlcore" or module.startswith("etlcore.")
    ]
    assert offenders == []


def test_connectors_import_and_register_their_kinds_without_etlcore():
    # Late imports inside functions count too: every kind module is imported here with etlcore blocked.
    code = (
        "import sys; sys.modules['etlcore'] = None\n"
        "import connectors\n"
        "print(','.join(sorted(connectors.connector_kinds())))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "file,postgres,rest,s3"

"""Rules of the house that a reader cannot see at a glance."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLICER_LOADED = sorted((ROOT / "VascularINRLib").glob("*.py")) + sorted((ROOT / "VascularINR").glob("**/*.py"))


@pytest.mark.parametrize("path", SLICER_LOADED, ids=lambda p: p.name)
def test_what_slicer_loads_parses_as_python_3_9(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


@pytest.mark.parametrize("path", sorted((ROOT / "VascularINRLib").glob("*.py")), ids=lambda p: p.name)
def test_the_library_imports_neither_qt_nor_slicer_in_its_numerics(path):
    text = path.read_text()
    assert not re.search(r"^\s*(import|from)\s+(qt|ctk|PythonQt)\b", text, re.M)
    if path.stem not in ("scene",):  # MRML scene work has its own file
        assert not re.search(r"^\s*(import|from)\s+slicer\b", text, re.M)


def test_every_torch_load_is_weights_only():
    for path in ROOT.rglob("*.py"):
        if ".git" in path.parts or "site-packages" in path.parts:  # a virtual environment inside the clone
            continue
        for line in path.read_text().splitlines():
            if "torch.load(" in line and "weights_only=True" not in line and "test_house_rules" not in path.name:
                pytest.fail(f"{path}: {line.strip()}")

"""The scripted module (VascularINR/VascularINR.py), its .ui, CMake and packaging, headless.

slicer-core has no application, Qt or ScriptedLoadableModule: test-only stand-ins replace exactly the
ScriptedLoadableModule base classes, parameterNodeWrapper and qt; everything else is real.
"""
import ast
import importlib.util
import os
import subprocess
import json
import re
import sys
import types
import typing
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "VascularINR"
MODULE_FILE = MODULE_DIR / "VascularINR.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "VascularINR.ui"
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"


def stand_ins():
    """Minimal replacements for what only the Slicer application provides."""
    qt = types.ModuleType("qt")

    base = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=1000):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(base, cls.__name__, cls)

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")

    class Choice:
        def __init__(self, choices):
            self.choices = tuple(choices)

    class WithinRange:
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

    wrapper.Choice, wrapper.WithinRange = Choice, WithinRange
    wrapper.parameterNodeWrapper = lambda cls: cls
    return {"qt": qt, "slicer.ScriptedLoadableModule": base, "slicer.parameterNodeWrapper": wrapper}


@pytest.fixture(scope="module")
def module():
    saved = {name: sys.modules.get(name) for name in [*stand_ins(), "VascularINR"]}
    sys.modules.update(stand_ins())
    try:
        spec = importlib.util.spec_from_file_location("VascularINR", MODULE_FILE)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules["VascularINR"] = loaded
        spec.loader.exec_module(loaded)
        yield loaded
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value


def test_the_module_describes_itself(module):
    parent = types.SimpleNamespace()
    module.VascularINR(parent)
    assert parent.title == "VascularINR" and parent.categories == ["Vascular Modeling Toolkit"]
    assert "point" in parent.helpText and "IGR" in parent.acknowledgementText


def parameters(module):
    """Resolved like the real parameterNodeWrapper does (typing.get_type_hints with extras)."""
    return typing.get_type_hints(module.VascularINRParameterNode, include_extras=True)


def test_parameter_annotations_resolve_and_defaults_are_valid(module):
    hints = parameters(module)
    assert {"points", "model", "preset", "resolution", "autoRefit", "nestedMode", "blendK",
            "exportFormat", "exportCoordinateSystem"} <= set(hints)
    for name, hint in hints.items():
        default = getattr(module.VascularINRParameterNode, name, None)
        for annotation in getattr(hint, "__metadata__", ()):
            if hasattr(annotation, "choices"):
                assert default in annotation.choices, name
            if hasattr(annotation, "minimum"):
                assert annotation.minimum <= default <= annotation.maximum, name


def test_the_library_names_match_the_module_choices(module):
    from VascularINRLib import fitting, nested, scene
    assert set(module.PRESETS) == set(fitting.PRESETS)
    assert set(scene.NESTED_MODES) == set(nested.MODES)
    assert tuple(scene.NESTED_WALLS) == tuple(nested.WALLS)


def ui_widgets():
    tree = ElementTree.parse(UI_FILE)  # fails loudly if the XML is malformed
    return tree, {w.get("name"): w for w in tree.iter("widget")}


def test_the_ui_parses_and_has_every_widget_the_code_uses():
    _, widgets = ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used, "the widget code uses no .ui names?"
    assert used - set(widgets) == set()


def test_the_ui_binds_every_parameter_and_nothing_else(module):
    _, widgets = ui_widgets()
    bound = {}
    for name, widget in widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert set(bound) == set(parameters(module))
    connectable = {bool: "QCheckBox", int: "QSpinBox", float: "QDoubleSpinBox", str: "QComboBox"}
    for name, widget_class in bound.items():  # widget types that parameterNodeWrapper can connect to
        hint = parameters(module)[name]
        kind = hint.__origin__ if typing.get_origin(hint) is typing.Annotated else hint
        assert widget_class == connectable.get(kind, "qMRMLNodeComboBox"), name


def test_every_mrml_widget_in_the_ui_receives_the_scene():
    tree, widgets = ui_widgets()
    needs_scene = {name for name, w in widgets.items() if w.get("class").startswith(("qMRML", "qSlicer"))
                   and w.get("class") != "qMRMLWidget"}
    connected = {c.findtext("receiver") for c in tree.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert needs_scene and needs_scene == connected
    assert tree.getroot().find("widget").get("class") == "qMRMLWidget"


def test_the_self_test_passes_headless(module):
    result = unittest.TestResult()
    module.VascularINRTest("runTest").run(result)
    assert result.wasSuccessful(), result.failures + result.errors
    assert not result.skipped


def test_the_logic_works_on_its_own_scene(module):
    logic = module.VascularINRLogic(scene=slicer.vtkMRMLScene())
    try:
        assert logic.processEvents() == 0 and logic.waitForJobs(1.0)
        assert logic.sceneLogic.request_fit(None) is False and logic.sceneLogic.status.state == "error"
    finally:
        logic.shutdown()


def test_requirements_use_compatible_ranges_and_are_installed_here(module):
    requirements = module.VascularINRLogic.requirements(REQUIREMENTS_FILE)
    names = {re.split(r"[~=<>!]", r)[0] for r in requirements}
    assert {"torch", "scikit-image"} <= names
    # torch from 2.3 (NumPy 2) with no upper bound: PyTorchUtils picks the build for the GPU driver
    assert all("~=" in r for r in requirements if not r.startswith("torch")), requirements
    assert "torch>=2.3" in requirements
    assert module.VascularINRLogic.missingRequirements(REQUIREMENTS_FILE) == []


def test_missing_or_too_old_packages_are_reported_without_importing_them(module, tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\ntorch~=2.1\nnumpy~=99.0  # too old here\nno-such-package-vascularinr~=1.0\n")
    before = set(sys.modules)
    missing = module.VascularINRLogic.missingRequirements(path)
    assert missing == ["numpy~=99.0", "no-such-package-vascularinr~=1.0"]
    assert "no_such_package_vascularinr" not in set(sys.modules) - before


def _library_modules_imported_by(path, seen=None):
    """The VascularINRLib modules a file imports, at its top or inside functions, and theirs in turn."""
    import ast

    library = ROOT / "VascularINRLib"
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:
                names = [module.split(".")[0]] if module else [alias.name for alias in node.names]
            elif module.startswith("VascularINRLib."):
                names = [module.split(".")[1]]
        for name in names:
            if name not in seen and (library / f"{name}.py").is_file():
                seen.add(name)
                _library_modules_imported_by(library / f"{name}.py", seen)
    return seen


def test_cmake_lists_what_slicer_imports_and_every_resource():
    """The extension ships the library modules the Slicer module can import (and those behind the
    package's lazy exports), not the command line, the browser app, batch or reproduce."""
    import VascularINRLib

    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = set(re.search(r"set\(MODULE_LIB_FILES(.*?)\)", text, re.S).group(1).split())
    needed = _library_modules_imported_by(MODULE_DIR / "VascularINR.py")
    for module in {m for m in VascularINRLib._EXPORTS.values() if m} | {"phantoms"}:
        needed.add(module)
        _library_modules_imported_by(ROOT / "VascularINRLib" / f"{module}.py", needed)
    assert listed == {f"{name}.py" for name in needed} | {"__init__.py"}
    assert not listed & {"cli.py", "web_app.py", "reproduce.py", "batch.py", "manifest.py"}
    assert "${MODULE_NAME}.py" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["VascularINR.py"]
    resources = re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\)", text, re.S).group(1).split()
    for resource in resources:
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "VascularINR")).is_file(), resource
    icon = MODULE_DIR / "Resources" / "Icons" / "VascularINR.png"
    assert icon.read_bytes() == (ROOT / "Resources" / "Icons" / "VascularINR.png").read_bytes()
    assert "add_subdirectory(VascularINR)" in (ROOT / "CMakeLists.txt").read_text()


def test_the_extensions_index_entry_matches_the_extension():
    entry = json.loads((ROOT / "VascularINR.json").read_text())
    assert {"$schema", "category", "scm_url"} <= set(entry)
    category = re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', (ROOT / "CMakeLists.txt").read_text()).group(1)
    assert entry["category"] == category
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', (ROOT / "CMakeLists.txt").read_text()).group(1)
    assert entry["scm_url"] == homepage + ".git"


def test_the_device_label_does_not_import_torch(module):
    """Opening the panel must not import torch on the GUI thread: the label comes from package metadata
    and names what is missing."""
    assert module.deviceText(["torch>=2.3"]) == "PyTorch is not installed"
    assert module.deviceText(["scikit-image~=0.20", "pynrrd~=1.0"]) == "Not ready: scikit-image, pynrrd missing"
    assert module.deviceText([]).startswith("PyTorch 2.") and "first fit" in module.deviceText([])
    source = MODULE_FILE.read_text()
    assert "describe_device" not in source and "import torch" not in source


def test_reloading_the_module_reads_edited_library_files_only(tmp_path):
    """sys.path gains no duplicate entry; the library's modules are forgotten only when a file changed."""
    code = """
import sys, time, VascularINRLib, VascularINRLib.errors
assert VascularINRLib.forget_if_edited() is False and "VascularINRLib.errors" in sys.modules
VascularINRLib.IMPORTED_AT = time.time() - 10 ** 9  # as if every file had been edited since
assert VascularINRLib.forget_if_edited() is True
assert not [n for n in sys.modules if n.startswith("VascularINRLib")]
import VascularINRLib as again
assert again is not VascularINRLib and again.forget_if_edited() is False
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    source = MODULE_FILE.read_text()
    assert "if str(MODULE_DIR.parent) not in sys.path" in source and "forget_if_edited()" in source


def test_auto_refit_is_not_given_a_list_the_user_did_not_choose():
    """No point list of the scene is picked for the user, and leaving the module stops auto-refit."""
    tree = ast.parse(MODULE_FILE.read_text())
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VascularINRWidget")
    methods = {n.name: ast.unparse(n) for n in widget.body if isinstance(n, ast.FunctionDef)}
    assert "GetFirstNodeByClass" not in methods["initializeParameterNode"]
    assert "set_auto_refit(self._watchedPoints, False)" in methods["exit"]
    assert "demoButton.enabled = ready" in methods["_onParameterNodeModified"]


def test_the_self_test_skips_with_its_reason_when_packages_are_missing(module, monkeypatch):
    import unittest

    monkeypatch.setattr(module.VascularINRLogic, "missingRequirements", staticmethod(lambda: ["torch>=2.3"]))
    result = unittest.TextTestRunner(stream=open(os.devnull, "w")).run(
        unittest.TestLoader().loadTestsFromTestCase(module.VascularINRTest))
    assert result.wasSuccessful() and result.skipped
    assert "torch>=2.3" in result.skipped[0][1]

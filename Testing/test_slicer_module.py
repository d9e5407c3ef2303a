"""The scripted module (VascularINR/VascularINR.py), its .ui, CMake and packaging, headless.

slicer-core has no application, Qt or ScriptedLoadableModule: test-only stand-ins replace exactly the
ScriptedLoadableModule base classes, parameterNodeWrapper and qt; everything else is real.
"""
import importlib.util
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
    assert parent.title == "VascularINR" and parent.categories == ["Vascular Modeling"]
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
    assert all("~=" in r for r in requirements), requirements
    assert module.VascularINRLogic.missingRequirements(REQUIREMENTS_FILE) == []


def test_missing_or_too_old_packages_are_reported_without_importing_them(module, tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\ntorch~=2.1\nnumpy~=99.0  # too old here\nno-such-package-vascularinr~=1.0\n")
    before = set(sys.modules)
    missing = module.VascularINRLogic.missingRequirements(path)
    assert missing == ["numpy~=99.0", "no-such-package-vascularinr~=1.0"]
    assert "no_such_package_vascularinr" not in set(sys.modules) - before


def test_cmake_lists_every_python_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = set(re.search(r"set\(MODULE_LIB_FILES(.*?)\)", text, re.S).group(1).split())
    assert listed == {p.name for p in (ROOT / "VascularINRLib").glob("*.py")}
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

"""The Slicer module's panel (VascularINR.ui) loaded with a real Qt loader (PySide6's QUiLoader, offscreen):
every widget the module names exists with the class it is used as, and every parameter of the parameter
node has a widget of a class that parameterNodeWrapper binds to its type.

Slicer's own classes (qMRMLNodeComboBox, ctkCollapsibleButton, ...) are not in PySide6: the loader makes
them the Qt class the .ui says they extend; their declared class is read from the .ui itself."""
import ast
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = ROOT / "VascularINR" / "VascularINR.py"
UI_FILE = ROOT / "VascularINR" / "Resources" / "UI" / "VascularINR.ui"

# what each widget the module names is used as (a method it calls, a signal it connects)
USED_AS = {
    "blendButton": "QPushButton", "cancelButton": "QPushButton", "cfdExportButton": "QPushButton",
    "cfdProposeButton": "QPushButton", "demoButton": "QPushButton", "exportButton": "QPushButton",
    "fitButton": "QPushButton", "installButton": "QPushButton", "nestedFitButton": "QPushButton",
    "blendModelsSelector": "qMRMLCheckableNodeComboBox",  # checkedNodes()
    "cfdInletComboBox": "QComboBox",  # currentIndexChanged(int), addItem, itemText
    "placeWidget": "qSlicerMarkupsPlaceWidget",  # placeMultipleMarkups, setCurrentNode
    "progressBar": "QProgressBar", "statusLabel": "QLabel", "deviceLabel": "QLabel", "dependenciesLabel": "QLabel",
    "dependenciesFrame": "QFrame",
}
# parameter type -> the classes parameterNodeWrapper's connectGui binds it to
BINDS = {"node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyComboBox"}, "bool": {"QCheckBox", "QPushButton"},
         "int": {"QSpinBox", "QSlider", "ctkSliderWidget"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
         "str": {"QComboBox", "QLineEdit"}}


def _declared_classes():
    tree = ElementTree.parse(UI_FILE)
    declared = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    parameters = {}
    for widget in tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                parameters[prop.find("string").text] = widget.get("class")
    extends = {c.findtext("class"): c.findtext("extends") for c in tree.iter("customwidget")}
    return declared, parameters, extends


def _module_names():
    """The `self.ui.<name>` attributes VascularINR.py uses, and its parameter node's fields with their kind."""
    tree = ast.parse(MODULE_FILE.read_text())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"}
    fields = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "VascularINRParameterNode":
            for item in node.body:
                if isinstance(item, ast.AnnAssign):
                    text = ast.unparse(item.annotation)
                    kind = "node" if "vtkMRML" in text else next(k for k in ("bool", "int", "float", "str")
                                                                 if k in text)
                    fields[item.target.id] = kind
    return used, fields


def _is_a(declared: str, wanted: str, extends: dict) -> bool:
    while declared is not None:
        if declared == wanted:
            return True
        declared = extends.get(declared)
    return False


@pytest.fixture(scope="module")
def panel():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    QtCore = pytest.importorskip("PySide6.QtCore", reason="PySide6 (a test extra) is not installed")
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    ui = QtCore.QFile(str(UI_FILE))
    assert ui.open(QtCore.QFile.ReadOnly)
    loader = QUiLoader()
    widget = loader.load(ui)
    ui.close()
    assert widget is not None, loader.errorString()
    yield widget
    widget.deleteLater()
    app.processEvents()


def test_every_widget_the_module_names_exists_with_its_class(panel):
    from PySide6.QtWidgets import QWidget

    declared, _, extends = _declared_classes()
    used, _ = _module_names()
    assert used == set(USED_AS), f"update USED_AS: {sorted(used ^ set(USED_AS))}"
    for name, wanted in USED_AS.items():
        child = panel.findChild(QWidget, name)
        assert child is not None, f"{name} is not in VascularINR.ui"
        assert _is_a(declared[name], wanted, extends), f"{name} is a {declared[name]}, used as a {wanted}"
        if not wanted.startswith(("q", "ctk")):  # a Qt class: the loader made exactly it
            assert child.metaObject().className() == wanted


def test_every_parameter_has_a_widget_that_binds_to_its_type(panel):
    from PySide6.QtWidgets import QWidget

    declared, parameters, extends = _declared_classes()
    _, fields = _module_names()
    assert set(parameters) == set(fields), f"parameters without a widget, or widgets without a parameter: " \
                                           f"{sorted(set(parameters) ^ set(fields))}"
    for name, kind in fields.items():
        assert any(_is_a(parameters[name], cls, extends) for cls in BINDS[kind]), (name, parameters[name])
    names = [n for n, c in declared.items() if c]
    assert all(panel.findChild(QWidget, n) is not None for n in names if n != "VascularINR")


def test_the_blend_list_has_no_none_row():
    tree = ElementTree.parse(UI_FILE)
    selector = next(w for w in tree.iter("widget") if w.get("name") == "blendModelsSelector")
    none = [p for p in selector.findall("property") if p.get("name") == "noneEnabled"]
    assert not none or none[0].findtext("bool") == "false"

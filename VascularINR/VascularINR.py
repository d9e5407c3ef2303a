"""VascularINR: points clicked on a vessel wall -> a smooth, watertight vessel surface held in a neural
signed distance function (IGR), refitted in the background as the points change.

This file only binds Qt controls to `VascularINRLib.scene.SceneLogic`, which does all MRML work (and
is shared with the browser app); fits run in a separate process (`VascularINRLib.process_worker`).
No `from __future__ import annotations` here: parameterNodeWrapper reads the annotations when the
class is made, and every annotation in this file is valid at run time on Python 3.9.
"""
import importlib
import importlib.metadata
import logging
import re
import sys
import time
from pathlib import Path
from typing import Annotated, List

import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLModelNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
except ImportError:  # slicer-core without the application
    def _(text: str) -> str:
        return text

MODULE_DIR = Path(__file__).resolve().parent
if not (MODULE_DIR / "VascularINRLib").is_dir() and (MODULE_DIR.parent / "VascularINRLib").is_dir():
    if str(MODULE_DIR.parent) not in sys.path:  # a source checkout: the library sits beside the module
        sys.path.append(str(MODULE_DIR.parent))
if hasattr(sys.modules.get("VascularINRLib"), "forget_if_edited"):
    # slicer.util.reloadScriptedModule re-runs this file only: a library file edited since it was
    # imported is read again (its modules are forgotten), the others stay as they are
    sys.modules["VascularINRLib"].forget_if_edited()

from VascularINRLib.scene import (  # noqa: E402
    CFD_UNITS,
    COORDINATE_SYSTEMS,
    EXPORT_FORMATS,
    NESTED_MODES,
    FitSettings,
    SceneLogic,
    Status,
)
from VascularINRLib.worker import MainThreadQueue  # noqa: E402

REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"
PRESETS = ("fast", "paper")  # the names in VascularINRLib.fitting.PRESETS (fitting imports torch)
POLL_INTERVAL_MS = 20  # while a job is pending or running; the timer stops when all is applied
# Fits run in a separate process (VascularINRLib.process_worker); the thread that relays its messages
# needs the GIL for microseconds, which Slicer's main thread holds while Qt idles: each poll lends it.
GIL_YIELD_S = 0.002


#
# VascularINR
#

class VascularINR(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VascularINR")
        self.parent.categories = [_("Vascular Modeling Toolkit")]
        self.parent.dependencies = []
        self.parent.contributors = ["VascularINR developers (VascularINR project)"]
        self.parent.helpText = _(
            "Click points on a vessel wall; a neural signed distance function is fitted to them in the "
            "background and shown as a smooth, watertight surface that follows every added, moved or "
            "deleted point. Nested walls (lumen, inner and outer wall), blending of several vessels, "
            "export to STL or VTP in LPS or RAS, and export for CFD (each end cut square by a plane you can "
            "move, flat caps, even triangles, labelled faces for SimVascular, VMTK and OpenFOAM) are in the "
            "panels below. Documentation: "
            "<a href=\"https://github.com/VascularINR/VascularINR#readme\">github.com/VascularINR/VascularINR</a>.")
        self.parent.acknowledgementText = _(
            "Implements and extends Alblas, Brune, Yeung and Wolterink, <i>Going off-grid: continuous "
            "implicit neural representations for 3D vascular modeling</i> (STACOM 2022), built on IGR "
            "(Gropp et al., ICML 2020).")


#
# Parameter node
#

@parameterNodeWrapper
class VascularINRParameterNode:
    points: vtkMRMLMarkupsFiducialNode
    model: vtkMRMLModelNode
    preset: Annotated[str, Choice(PRESETS)] = "fast"
    resolution: Annotated[int, WithinRange(32, 512)] = 128
    autoRefit: bool = True
    useImage: bool = True
    lumenPoints: vtkMRMLMarkupsFiducialNode
    innerWallPoints: vtkMRMLMarkupsFiducialNode
    outerWallPoints: vtkMRMLMarkupsFiducialNode
    nestedMode: Annotated[str, Choice(NESTED_MODES)] = "guaranteed"
    blendK: Annotated[float, WithinRange(0.0, 50.0)] = 2.0
    blendOutput: vtkMRMLModelNode
    exportModel: vtkMRMLModelNode
    exportFormat: Annotated[str, Choice(tuple(EXPORT_FORMATS))] = "STL"
    exportCoordinateSystem: Annotated[str, Choice(COORDINATE_SYSTEMS)] = "LPS"
    cfdEdgeLength: Annotated[float, WithinRange(0.0, 20.0)] = 0.0  # 0: the smallest end's radius / 2.5
    cfdExtend: Annotated[float, WithinRange(0.0, 20.0)] = 0.0
    cfdUnits: Annotated[str, Choice(CFD_UNITS)] = "mm"


#
# VascularINRWidget
#

class VascularINRWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._watchedPoints = None
        self._pollTimer = None
        self._missing: List[str] = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VascularINR.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VascularINRLogic()
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._poll)  # started by a scheduled job, stopped when idle
        self.logic.sceneLogic.add_status_listener(self._showStatus)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.demoButton.connect("clicked(bool)", self.onLoadDemo)
        self.ui.fitButton.connect("clicked(bool)", self.onFit)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.nestedFitButton.connect("clicked(bool)", self.onNestedFit)
        self.ui.blendButton.connect("clicked(bool)", self.onBlend)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.cfdProposeButton.connect("clicked(bool)", self.onProposeCuts)
        self.ui.cfdInletComboBox.connect("currentIndexChanged(int)", self.onInlet)
        self.ui.cfdExportButton.connect("clicked(bool)", self.onExportCFD)
        self.ui.progressBar.setVisible(False)

        self.initializeParameterNode()
        self._updateDependencies()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self.logic is not None:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._updateDependencies()
        if not self._missing:
            self.logic.sceneLogic.prestart()  # torch loads in the fit process while the user clicks

    def exit(self) -> None:
        if self._watchedPoints is not None and self.logic is not None:  # auto-refit stays in this module
            self.logic.sceneLogic.set_auto_refit(self._watchedPoints, False)
            self._watchedPoints = None
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._watchedPoints = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onReload(self) -> None:
        """Reload the library too (developer mode)."""
        if self.logic is not None:
            self.logic.shutdown()
        for name in [n for n in sys.modules if n == "VascularINRLib" or n.startswith("VascularINRLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    # --- parameter node -----------------------------------------------------------------------

    def initializeParameterNode(self) -> None:
        # No point list is picked for the user: auto-refit follows only a list chosen in this module
        # (the selector, or "Load phantom CT"), never landmarks placed for another purpose.
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        if parameters is None:
            return
        self._applySettings()
        self.ui.placeWidget.setCurrentNode(parameters.points)
        self._updateWatch()
        ready = not self._missing
        self.ui.demoButton.enabled = ready
        self.ui.fitButton.enabled = ready and parameters.points is not None
        self.ui.nestedFitButton.enabled = ready
        self.ui.blendButton.enabled = ready
        self.ui.exportButton.enabled = parameters.exportModel is not None
        self.ui.cfdProposeButton.enabled = ready and parameters.exportModel is not None
        self.ui.cfdExportButton.enabled = ready and parameters.exportModel is not None
        self._updateInlets()
        self.ui.exportButton.toolTip = _("Writes {format} in {system} coordinates (mm)").format(
            format=parameters.exportFormat, system=parameters.exportCoordinateSystem)

    def _applySettings(self) -> None:
        settings = self.logic.sceneLogic.settings
        settings.preset = self._parameterNode.preset
        settings.resolution = self._parameterNode.resolution
        settings.use_image = self._parameterNode.useImage

    def _updateWatch(self) -> None:
        """Auto-refit follows the selected point list while the box is ticked."""
        parameters = self._parameterNode
        points = parameters.points if parameters.autoRefit and not self._missing else None
        if self._watchedPoints is not None and self._watchedPoints is not points:
            self.logic.sceneLogic.set_auto_refit(self._watchedPoints, False)
        if points is not None:
            self.logic.sceneLogic.set_auto_refit(points, True, parameters.model)
        self._watchedPoints = points

    # --- dependencies -------------------------------------------------------------------------

    def _updateDependencies(self) -> None:
        self._missing = VascularINRLogic.missingRequirements()
        self.ui.dependenciesFrame.setVisible(bool(self._missing))
        self.ui.deviceLabel.text = deviceText(self._missing)
        if self._missing:
            self.ui.dependenciesLabel.text = _("VascularINR needs Python packages that are not installed: "
                                               "{packages}.").format(packages=", ".join(self._missing))
        if self._parameterNode:
            self._onParameterNodeModified()

    def onInstall(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
            self.logic.installRequirements(self._missing)
        self._updateDependencies()

    # --- actions ------------------------------------------------------------------------------

    def onLoadDemo(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Loading the phantom CT failed."), waitCursor=True):
            volume = self.logic.sceneLogic.add_phantom_ct()
            slicer.util.setSliceViewerLayers(background=volume, fit=True)
            if not self._parameterNode.points:
                self._parameterNode.points = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLMarkupsFiducialNode", slicer.mrmlScene.GenerateUniqueName("Vessel wall"))

    def onFit(self) -> None:
        self._applySettings()
        self.logic.sceneLogic.request_fit(self._parameterNode.points, self._parameterNode.model)

    def onCancel(self) -> None:
        self.logic.sceneLogic.cancel()

    def onNestedFit(self) -> None:
        self._applySettings()
        parameters = self._parameterNode
        self.logic.sceneLogic.request_nested_fit(
            {"lumen": parameters.lumenPoints, "inner_wall": parameters.innerWallPoints,
             "outer_wall": parameters.outerWallPoints}, parameters.nestedMode)

    def onBlend(self) -> None:
        self._applySettings()
        models = list(self.ui.blendModelsSelector.checkedNodes())
        self.logic.sceneLogic.request_blend(models, self._parameterNode.blendK, self._parameterNode.blendOutput)

    def onExport(self) -> None:
        parameters = self._parameterNode
        model, fileFormat, system = parameters.exportModel, parameters.exportFormat, parameters.exportCoordinateSystem
        if model is None:
            return
        folder = qt.QStandardPaths.writableLocation(qt.QStandardPaths.DocumentsLocation)
        suggested = str(Path(folder) / SceneLogic.export_file_name(model, fileFormat, system))
        extension = EXPORT_FORMATS[fileFormat]
        path = qt.QFileDialog.getSaveFileName(
            self.parent, _("Export '{name}' as {format}, {system} coordinates, mm").format(
                name=model.GetName(), format=fileFormat, system=system),
            suggested, f"{fileFormat} (*{extension})")
        if path:
            if not path.lower().endswith(extension):
                path += extension
            self.logic.sceneLogic.export_model(model, path, system)

    def onProposeCuts(self) -> None:
        model = self._parameterNode.exportModel
        if model is not None:
            self.logic.sceneLogic.propose_cfd_cuts(model)
            self._updateInlets()

    def _updateInlets(self) -> None:
        """The inlet list: the model's cut planes, inlet first (the planes are the scene's markups)."""
        model = self._parameterNode.exportModel if self._parameterNode is not None else None
        planes = self.logic.sceneLogic.cfd_planes(model) if (self.logic is not None and model is not None) else []
        names = [plane.GetName() for plane in planes]
        combo = self.ui.cfdInletComboBox
        if [combo.itemText(i) for i in range(combo.count)] != names:
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for name in names:
                combo.addItem(name)
            combo.setCurrentIndex(0 if names else -1)
            combo.blockSignals(wasBlocked)
        combo.enabled = bool(names)

    def onInlet(self, index: int) -> None:
        model = self._parameterNode.exportModel
        planes = self.logic.sceneLogic.cfd_planes(model) if model is not None else []
        if 0 < index < len(planes):
            self.logic.sceneLogic.set_cfd_inlet(model, planes[index])
            self._updateInlets()

    def onExportCFD(self) -> None:
        parameters = self._parameterNode
        model = parameters.exportModel
        if model is None:
            return
        if not self.logic.sceneLogic.cfd_planes(model):
            self.logic.sceneLogic.propose_cfd_cuts(model)
            self._updateInlets()
        start = qt.QStandardPaths.writableLocation(qt.QStandardPaths.DocumentsLocation)
        parent = qt.QFileDialog.getExistingDirectory(
            self.parent, _("Folder for the CFD export of '{name}'").format(name=model.GetName()), start)
        if not parent:
            return
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", model.GetName()).strip("_") or "model"
        self.logic.sceneLogic.request_cfd_export(
            model, str(Path(parent) / f"{stem}_cfd"), parameters.cfdEdgeLength or None, parameters.cfdExtend,
            parameters.cfdUnits, parameters.exportCoordinateSystem)

    # --- status (main thread: posted callbacks run from the poll timer) -------------------------

    def _poll(self) -> None:
        applied = self.logic.processEvents()
        busy = self.logic.sceneLogic.busy
        self.ui.cancelButton.enabled = busy
        if busy:
            time.sleep(GIL_YIELD_S)
        elif not applied:  # nothing runs and nothing is left to apply: no timer while idle
            self._pollTimer.stop()

    def _showStatus(self, status: Status) -> None:
        if status.state in ("scheduled", "running") and not self._pollTimer.isActive():
            self._pollTimer.start()
        self.ui.statusLabel.text = status.message
        running = status.state in ("scheduled", "running")
        self.ui.progressBar.setVisible(running)
        if running and status.progress is not None:
            self.ui.progressBar.value = int(round(100 * status.progress))
        if status.state == "done" and self._parameterNode:
            parameters = self._parameterNode
            if parameters.points is not None and parameters.model is None:
                parameters.model = self.logic.sceneLogic.model_for_points(parameters.points)
            if parameters.exportModel is None:
                parameters.exportModel = parameters.model
            device = self.logic.sceneLogic.report_of(parameters.model).get("fit", {}).get("device")
            if device:
                self.ui.deviceLabel.text = _("Fits run on {device}").format(device=device)


#
# VascularINRLogic
#

class VascularINRLogic(ScriptedLoadableModuleLogic):
    """Usable from the Python console too:

        logic = slicer.util.getModuleLogic("VascularINR")
        logic.sceneLogic.request_fit(getNode("Vessel wall")); logic.waitForJobs()
    """

    def __init__(self, scene=None, debounce_s: float = 0.3) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.events = MainThreadQueue()
        self.scene = scene if scene is not None else slicer.mrmlScene
        # fits run in the scene logic's fit process (PythonSlicer): torch never loads in Slicer's own process
        self.sceneLogic = SceneLogic(self.scene, self.events.post, debounce_s)

    def getParameterNode(self):
        return VascularINRParameterNode(super().getParameterNode())

    def processEvents(self) -> int:
        """Apply finished fits and progress (posted by the worker); main thread only."""
        return self.events.process_pending()

    def waitForJobs(self, timeout_s: float = 300.0) -> bool:
        """Block until every scheduled fit finished and was applied (scripts and tests)."""
        return self.events.run_until(lambda: not self.sceneLogic.busy, timeout_s)

    def shutdown(self) -> None:
        self.sceneLogic.shutdown()

    # --- Python dependencies ------------------------------------------------------------------

    @staticmethod
    def requirements(path: Path = REQUIREMENTS_FILE) -> List[str]:
        lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
        return [line for line in lines if line]

    @staticmethod
    def missingRequirements(path: Path = REQUIREMENTS_FILE) -> List[str]:
        """Requirements that are not installed in a matching version (nothing is imported)."""
        missing = []
        for requirement in VascularINRLogic.requirements(path):
            name = _requirement_name(requirement)
            try:
                installed = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(requirement)
                continue
            try:
                from packaging.requirements import Requirement
                if not Requirement(requirement).specifier.contains(installed, prereleases=True):
                    missing.append(requirement)
            except ImportError:  # without packaging, presence is all that is checked
                pass
        return missing

    def installRequirements(self, missing: List[str]) -> None:
        """Install `missing` after the user confirms: torch through the PyTorch extension when it is
        installed, the rest through slicer.packaging when present, else slicer.util.pip_install."""
        torch = [r for r in missing if _requirement_name(r) == "torch"]
        others = [r for r in missing if r not in torch]
        torchUtils = self._pytorchUtilsLogic() if torch else None
        if torchUtils is not None:
            version = torch[0][len("torch"):].strip()
            if torchUtils.installTorch(askConfirmation=True, torchVersionRequirement=version) is None:
                return  # declined
            torch = []
        remaining = torch + others
        if not remaining:
            return
        slicerPackaging = self._slicerPackaging()
        if slicerPackaging is not None:
            from packaging.requirements import Requirement
            try:
                slicerPackaging.pip_ensure([Requirement(r) for r in remaining], requester="VascularINR")
            except RuntimeError as error:  # the user declined
                logging.info("VascularINR: %s", error)
            return
        message = _("VascularINR needs these Python packages:\n\n{packages}\n\nInstall them now?").format(
            packages="\n".join(remaining))
        if any(_requirement_name(r) == "torch" for r in remaining):
            message += " " + _("PyTorch alone is a download of up to a few GB.")
        if slicer.util.confirmOkCancelDisplay(message, _("VascularINR - install Python packages")):
            slicer.util.pip_install(remaining)

    @staticmethod
    def _slicerPackaging():
        """slicer.packaging when this Slicer has it (recent versions), else None."""
        try:
            module = importlib.import_module("slicer.packaging")
        except ImportError:
            return None
        return module if hasattr(module, "pip_ensure") else None

    @staticmethod
    def _pytorchUtilsLogic():
        try:
            import PyTorchUtils
        except ImportError:
            return None
        return PyTorchUtils.PyTorchUtilsLogic()


def deviceText(missing: List[str]) -> str:
    """The device label before any fit, without importing torch on the GUI thread (seconds)."""
    names = [_requirement_name(r) for r in missing]
    if "torch" in names:
        return _("PyTorch is not installed")
    if names:
        return _("Not ready: {packages} missing").format(packages=", ".join(names))
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return _("PyTorch is not installed")
    return _("PyTorch {version}; the first fit says whether it runs on a GPU").format(version=version)


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]


#
# VascularINRTest
#

class VascularINRTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Reload and Test, ctest) and headless (pytest, Testing/test_slicer_module.py)."""

    def setUp(self) -> None:
        self.scene = getattr(slicer, "mrmlScene", None)
        if self.scene is None:
            self.scene = slicer.vtkMRMLScene()
        self.scene.Clear(0)

    def runTest(self) -> None:
        self.setUp()
        self.test_FitOnPhantomCT()

    def _say(self, message: str) -> None:
        logging.info(message)
        if hasattr(slicer, "app"):
            self.delayDisplay(message)

    def test_FitOnPhantomCT(self) -> None:
        missing = VascularINRLogic.missingRequirements()
        if missing:  # reported as skipped (ctest's output, Reload and Test's message), not as passed
            self.skipTest("VascularINR's Python packages are not installed: " + ", ".join(missing))
        import numpy as np

        from VascularINRLib import mesh, phantoms
        logic = VascularINRLogic(scene=self.scene, debounce_s=0.05)
        scene = logic.sceneLogic
        scene.settings = FitSettings("fast", 64, "cpu", {"max_iterations": 150, "early_stop": False})
        try:
            self._say("Loading the AAA phantom CT")
            volume = scene.add_phantom_ct(spacing_mm=(2.0, 2.0, 2.0))
            lumen = phantoms.aaa_nested()["lumen"]
            wall = mesh.sample_points_on_mesh(lumen.mesh(voxel_mm=1.0), 61, seed=1)
            points = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Lumen wall")
            for point in wall[:60]:
                points.AddControlPoint(*point)

            self._say("Fitting 60 points on the lumen wall")
            self.assertTrue(scene.request_fit(points), scene.status.message)
            self.assertTrue(logic.waitForJobs(120.0), "the fit did not finish in time")
            self.assertEqual(scene.status.state, "done", scene.status.message)
            model = scene.model_for_points(points)
            self.assertIsNotNone(model)
            self.assertGreater(model.GetPolyData().GetNumberOfPoints(), 100)

            # The fitted surface separates the contrast-filled lumen from the wall around it in the CT.
            sdf = scene.network_of(model)
            hu = slicer.util.arrayFromVolume(volume)  # [k, j, i]
            ijk = np.argwhere(np.ones(hu.shape[::-1], dtype=bool))[::7]  # every 7th voxel, (i, j, k)
            ras = np.asarray(volume.GetOrigin()) + ijk * np.asarray(volume.GetSpacing())
            box = sdf.bounds_with_margin(0.0)
            near = np.all((ras >= box[0::2]) & (ras <= box[1::2]), axis=1)
            distance = sdf(ras[near])
            values = hu[tuple(ijk[near][:, ::-1].T)]
            inside, shell = values[distance < -2.0], values[(distance > 2.0) & (distance < 5.0)]
            self.assertGreater(float(np.mean(inside)), 200.0)
            self.assertLess(float(np.mean(shell)), 120.0)

            self._say("Adding a point: exactly one warm-started refit, same model node")
            scene.set_auto_refit(points, True)
            started = scene.fits_started
            points.AddControlPoint(*wall[60])
            self.assertTrue(logic.waitForJobs(120.0))
            self.assertEqual(scene.fits_started, started + 1)
            self.assertIs(scene.model_for_points(points), model)
            self.assertTrue(scene.report_of(model)["fit"]["warm_started"])
            self.assertEqual(scene.report_of(model)["fit"]["points"], 61)

            self._say("CFD export: a plane per end, then the labelled folder")
            import json
            import tempfile

            planes = scene.propose_cfd_cuts(model)
            self.assertGreaterEqual(len(planes), 2, scene.status.message)
            folder = Path(tempfile.mkdtemp(prefix="VascularINR-selftest-")) / "cfd"
            self.assertTrue(scene.request_cfd_export(model, str(folder)), scene.status.message)
            self.assertTrue(logic.waitForJobs(120.0))
            self.assertEqual(scene.status.state, "done", scene.status.message)
            report = json.loads((folder / "cfd.json").read_text())
            self.assertEqual(report["checks"]["boundary_edges"], 0)
            self.assertEqual(len(report["faces"]), len(planes) + 1)
            self._say("Test passed")
        finally:
            logic.shutdown()

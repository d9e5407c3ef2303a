"""The MRML scene logic shared by the Slicer module and the browser app, on real MRML (slicer-core)."""
import glob
import json
import threading
import zipfile

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
from vtkmodules.util.misc import calldata_type  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from VascularINRLib import mesh, phantoms  # noqa: E402
from VascularINRLib.scene import (  # noqa: E402
    ATTRIBUTE_NETWORK,
    ATTRIBUTE_STRUCTURE,
    REFERENCE_POINTS,
    STRUCTURE_COLOURS,
    FitSettings,
    SceneLogic,
    decode_network,
)
from VascularINRLib.worker import MainThreadQueue  # noqa: E402

QUICK = FitSettings("fast", 48, "cpu", {"max_iterations": 150, "early_stop": False})
SLOW = FitSettings("fast", 48, "cpu", {"max_iterations": 50000, "early_stop": False})  # only ever cancelled
TIMEOUT_S = 90.0


def new_scene():
    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLMarkupsJsonStorageNode())  # Slicer's Markups module does this
    return scene


def add_points(scene, points, name="Vessel wall"):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for point in points:
        node.AddControlPoint(*point)
    return node


def node_count(scene):
    return scene.GetNumberOfNodes()


@pytest.fixture(scope="module")
def lumen_points():
    return mesh.sample_points_on_mesh(phantoms.aaa_lumen().mesh(voxel_mm=1.0), 64, seed=0)


@pytest.fixture
def scene():
    return new_scene()


@pytest.fixture
def events():
    return MainThreadQueue()


@pytest.fixture
def logic(scene, events):
    logic = SceneLogic(scene, events.post, debounce_s=0.05)
    logic.settings = QUICK
    yield logic
    logic.shutdown()


def wait(logic, events, timeout_s=TIMEOUT_S):
    assert events.run_until(lambda: not logic.busy, timeout_s), "the job did not finish in time"


def wait_until_running(logic, events):
    assert events.run_until(lambda: logic.status.state == "running", TIMEOUT_S), logic.status


class ThreadWitness:
    """Records the thread of every MRML event on the scene, on nodes added to it and on given nodes."""

    def __init__(self, scene):
        self.threads = set()
        self.count = 0
        for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, vtk.vtkCommand.ModifiedEvent):
            scene.AddObserver(event, self._record)
        scene.AddObserver(scene.NodeAddedEvent, self._on_node_added)
        for index in range(scene.GetNumberOfNodes()):
            self.watch(scene.GetNthNode(index))

    def watch(self, node):
        node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._record)

    def _record(self, caller, event):
        self.threads.add(threading.get_ident())
        self.count += 1

    @calldata_type(vtk.VTK_OBJECT)
    def _on_node_added(self, scene, event, node):
        self.watch(node)


# --- Fit panel --------------------------------------------------------------------------------

def test_points_become_a_fitted_model_that_keeps_its_network(scene, logic, events, lumen_points):
    points = add_points(scene, lumen_points[:60])
    assert logic.request_fit(points)
    assert logic.status.state == "scheduled"
    wait(logic, events)
    assert logic.status.state == "done", logic.status.message

    model = logic.model_for_points(points)
    assert model is not None and model.GetNodeReference(REFERENCE_POINTS) is points
    assert model.GetAttribute(ATTRIBUTE_STRUCTURE) == "vessel"
    assert model.GetPolyData().GetNumberOfPoints() > 100
    display = model.GetDisplayNode()
    assert display.GetColor() == pytest.approx(STRUCTURE_COLOURS["vessel"]) and display.GetVisibility2D()
    report = logic.report_of(model)
    assert report["fit"]["points"] == 60 and report["surfaces"]["vessel"]["watertight"]

    sdf = decode_network(model.GetAttribute(ATTRIBUTE_NETWORK))
    assert np.abs(sdf(lumen_points[:60])).mean() < 1.5  # mm: the surface passes near the points
    vertices = numpy_support.vtk_to_numpy(model.GetPolyData().GetPoints().GetData())
    assert np.abs(sdf(vertices[::10])).max() < 1.0  # the mesh is the network's zero level


def test_adding_a_point_refits_once_after_the_debounce_in_place(scene, events, lumen_points):
    logic = SceneLogic(scene, events.post, debounce_s=0.5)
    logic.settings = QUICK
    try:
        points = add_points(scene, lumen_points[:60])
        assert logic.request_fit(points)
        wait(logic, events)
        model = logic.model_for_points(points)
        model.GetDisplayNode().SetColor(0.1, 0.9, 0.1)  # the user's choice survives refits
        model_id, nodes = model.GetID(), node_count(scene)

        logic.set_auto_refit(points, True)
        started = logic.fits_started
        points.AddControlPoint(*lumen_points[60])  # added, modified and defined: three events
        points.SetNthControlPointPosition(60, *(lumen_points[60] + 0.2))  # then nudged
        events.process_pending()
        assert logic.fits_started == started  # still inside the debounce
        wait(logic, events)

        assert logic.fits_started == started + 1
        assert logic.model_for_points(points) is model and model.GetID() == model_id
        assert node_count(scene) == nodes
        fit = logic.report_of(model)["fit"]
        assert fit["points"] == 61 and fit["warm_started"]
        assert model.GetDisplayNode().GetColor() == pytest.approx((0.1, 0.9, 0.1))

        points.SetNthControlPointLabel(0, "renamed")  # not a geometric change: no refit
        points.RemoveNthControlPoint(60)
        points.RemoveNthControlPoint(59)
        wait(logic, events)
        assert logic.fits_started == started + 2 and logic.report_of(model)["fit"]["points"] == 59

        logic.set_auto_refit(points, False)
        points.RemoveNthControlPoint(0)
        wait(logic, events)
        assert logic.fits_started == started + 2
    finally:
        logic.shutdown()


def test_moving_points_during_a_fit_cancels_it_and_only_the_newest_result_lands_on_the_main_thread(
        scene, events, lumen_points):
    logic = SceneLogic(scene, events.post, debounce_s=0.5)
    try:
        points = add_points(scene, lumen_points[:60])
        witness = ThreadWitness(scene)
        logic.set_auto_refit(points, True)
        logic.settings = SLOW
        assert logic.request_fit(points)
        wait_until_running(logic, events)

        logic.settings = QUICK
        for index in range(5):  # dragged while the slow fit runs
            points.SetNthControlPointPosition(index, *(lumen_points[index] + 0.1 * index))
            events.process_pending()
        wait(logic, events)

        assert logic.status.state == "done", logic.status.message
        model = logic.model_for_points(points)
        fit = logic.report_of(model)["fit"]
        assert fit["iterations"] == 150  # the slow fit never finished: the newest one won
        assert logic.fits_started == 2
        assert len(logic.models()) == 1
        assert witness.count > 0 and witness.threads == {threading.get_ident()}
    finally:
        logic.shutdown()


def test_the_scene_logic_refuses_other_threads(scene, logic, lumen_points):
    points = add_points(scene, lumen_points[:60])
    errors = []

    def from_a_thread():
        try:
            logic.request_fit(points)
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=from_a_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1 and not logic.busy


def test_cancel_keeps_the_previous_surface(scene, logic, events, lumen_points):
    points = add_points(scene, lumen_points[:60])
    logic.request_fit(points)
    wait(logic, events)
    model = logic.model_for_points(points)
    before = model.GetPolyData()
    logic.settings = SLOW
    logic.request_fit(points)
    wait_until_running(logic, events)
    assert logic.cancel()
    wait(logic, events)
    assert logic.status.state == "cancelled"
    assert model.GetPolyData() is before


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["none", "empty", "three points", "volume", "flat", "model as points"])
def test_bad_input_gives_a_status_message_and_leaves_the_scene_alone(scene, logic, events, lumen_points, case):
    flat = np.c_[lumen_points[:40, :2], np.zeros(40)]
    nodes = {
        "none": lambda: None,
        "empty": lambda: add_points(scene, []),
        "three points": lambda: add_points(scene, lumen_points[:3]),
        "volume": lambda: scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT"),
        "flat": lambda: add_points(scene, flat),
        "model as points": lambda: scene.AddNewNodeByClass("vtkMRMLModelNode", "Some model"),
    }
    node = nodes[case]()
    before = node_count(scene)
    assert logic.request_fit(node) is False
    assert logic.status.state == "error" and logic.status.message
    wait(logic, events)
    assert node_count(scene) == before and logic.models() == []


def test_a_point_list_deleted_mid_fit_is_reported_and_nothing_is_added(scene, logic, events, lumen_points):
    points = add_points(scene, lumen_points[:60])
    logic.settings = SLOW
    assert logic.request_fit(points)
    wait_until_running(logic, events)
    nodes = node_count(scene)
    scene.RemoveNode(points)
    wait(logic, events)
    assert logic.status.state == "error" and "deleted" in logic.status.message
    assert node_count(scene) == nodes - 1 and logic.models() == []


def test_a_point_list_deleted_before_its_debounced_fit_starts(scene, events, lumen_points):
    logic = SceneLogic(scene, events.post, debounce_s=5.0)
    try:
        points = add_points(scene, lumen_points[:60])
        assert logic.request_fit(points)
        scene.RemoveNode(points)
        wait(logic, events)
        assert logic.fits_started == 0 and "deleted" in logic.status.message and logic.models() == []
    finally:
        logic.shutdown()


# --- Export panel ---------------------------------------------------------------------------------

def read_back(path, coordinate_system=None):
    storage = slicer.vtkMRMLModelStorageNode()
    storage.SetFileName(str(path))
    if coordinate_system:
        storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.GetCoordinateSystemTypeFromString(coordinate_system))
    model = new_scene().AddNewNodeByClass("vtkMRMLModelNode")
    assert storage.ReadData(model)
    return numpy_support.vtk_to_numpy(model.GetPolyData().GetPoints().GetData()).astype(float)


def raw_vertices(path):
    reader = vtk.vtkSTLReader() if str(path).endswith(".stl") else vtk.vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    return numpy_support.vtk_to_numpy(reader.GetOutput().GetPoints().GetData()).astype(float)


def same_geometry(a, b, tolerance=1e-3):
    from scipy.spatial import cKDTree
    return len(a) > 0 and cKDTree(b).query(a)[0].max() < tolerance and cKDTree(a).query(b)[0].max() < tolerance


@pytest.mark.parametrize("file_format", ["STL", "VTP"])
def test_export_through_storage_nodes_in_lps_and_ras(scene, logic, tmp_path, file_format):
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "AAA lumen")
    model.SetAndObservePolyData(phantoms.aaa_lumen().mesh(voxel_mm=2.0))
    ras = numpy_support.vtk_to_numpy(model.GetPolyData().GetPoints().GetData()).astype(float)
    nodes = node_count(scene)
    written = {}
    for system in ("LPS", "RAS"):
        name = SceneLogic.export_file_name(model, file_format, system)
        assert name == f"AAA_lumen_{system}.{file_format.lower()}"
        written[system] = logic.export_model(model, tmp_path / name, system)
        assert written[system] == tmp_path / name and logic.status.state == "done"
        assert system in logic.status.message
    lps = ras * [-1.0, -1.0, 1.0]
    assert same_geometry(raw_vertices(written["LPS"]), lps)  # the file itself is in LPS
    assert same_geometry(raw_vertices(written["RAS"]), ras)
    assert same_geometry(read_back(written["LPS"], "LPS"), ras)  # back in Slicer's RAS
    assert same_geometry(read_back(written["RAS"], "RAS"), ras)
    if file_format == "VTP":  # the file records its coordinate system
        assert same_geometry(read_back(written["RAS"]), ras) and same_geometry(read_back(written["LPS"]), ras)
    else:  # STL does not: Slicer assumes LPS
        assert same_geometry(read_back(written["LPS"]), ras)
    assert node_count(scene) == nodes and model.GetStorageNode() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written.values())


def test_bad_exports_give_a_status_message(scene, logic, tmp_path):
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "Empty")
    assert logic.export_model(model, tmp_path / "empty.stl") is None and "no surface" in logic.status.message
    model.SetAndObservePolyData(phantoms.sphere(10.0).mesh(voxel_mm=2.0))
    assert logic.export_model(model, tmp_path / "model.obj") is None and ".stl" in logic.status.message
    assert logic.export_model(model, tmp_path / "x.stl", "XYZ") is None and "LPS" in logic.status.message
    assert logic.export_model(model, tmp_path / "missing" / "x.stl") is None
    assert logic.export_model(None, tmp_path / "x.stl") is None
    assert list(tmp_path.iterdir()) == []


# --- saved scenes ----------------------------------------------------------------------------------

def save_and_reload(scene, tmp_path):
    bundle = tmp_path / "vessels.mrb"
    assert scene.WriteToMRB(str(bundle))
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(bundle).extractall(folder)
    reloaded = new_scene()
    reloaded.SetURL(glob.glob(str(folder / "**" / "*.mrml"), recursive=True)[0])
    assert reloaded.Import()
    return reloaded


def test_a_saved_scene_reloads_with_models_that_can_be_refitted(scene, logic, events, lumen_points, tmp_path):
    points = add_points(scene, lumen_points[:60])
    logic.request_fit(points)
    wait(logic, events)
    saved = logic.model_for_points(points)
    saved_text = saved.GetAttribute(ATTRIBUTE_NETWORK)

    reloaded = save_and_reload(scene, tmp_path)
    again = SceneLogic(reloaded, events.post, debounce_s=0.05)
    again.settings = QUICK
    try:
        model = again.models("vessel")[0]
        reloaded_points = model.GetNodeReference(REFERENCE_POINTS)
        assert reloaded_points.GetNumberOfControlPoints() == 60
        assert model.GetAttribute(ATTRIBUTE_NETWORK) == saved_text
        assert model.GetPolyData().GetNumberOfPoints() == saved.GetPolyData().GetNumberOfPoints()
        assert again.network_of(model) is not None

        reloaded_points.AddControlPoint(*lumen_points[60])
        assert again.request_fit(reloaded_points)
        wait(again, events)
        assert again.status.state == "done", again.status.message
        assert again.models("vessel") == [model]
        fit = again.report_of(model)["fit"]
        assert fit["warm_started"] and fit["points"] == 61
    finally:
        again.shutdown()


def test_an_unreadable_network_attribute_is_an_error_not_a_crash(scene, logic, events, lumen_points):
    points = add_points(scene, lumen_points[:60])
    logic.request_fit(points)
    wait(logic, events)
    model = logic.model_for_points(points)
    model.SetAttribute(ATTRIBUTE_NETWORK, "bm90IGEgbmV0d29yaw==")
    assert logic.request_fit(points)
    wait(logic, events)
    assert logic.status.state == "error" and "network" in logic.status.message


# --- demo volume ------------------------------------------------------------------------------------

def test_the_phantom_ct_lands_in_ras_with_its_spacing(scene, logic):
    volume = logic.add_phantom_ct(spacing_mm=(2.0, 2.0, 2.0))
    hu = slicer.util.arrayFromVolume(volume)
    assert volume.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    lumen_centre = np.array([0.0, 0.0, 100.0])  # on the aorta's centreline, well above the sac
    ijk = np.round((lumen_centre - np.array(volume.GetOrigin())) / 2.0).astype(int)
    assert hu[ijk[2], ijk[1], ijk[0]] > 150  # contrast-filled lumen
    assert hu[0, 0, 0] < -500  # air outside the body


def test_clicks_on_a_slice_view_are_fitted_as_slices_with_the_volumes_voxel(scene, logic, events):
    """The scene tells the fit what it knows: the error of a click (half the voxel of the volume the
    views show) and the planes of the slice views, here an oblique one that no axis would find."""
    logic.add_phantom_ct(spacing_mm=(0.8, 0.8, 1.5))
    view = scene.AddNewNodeByClass("vtkMRMLSliceNode", "Oblique")
    normal = np.array([1.0, 0.0, 1.0]) / np.sqrt(2.0)
    u = np.array([0.0, 1.0, 0.0])
    v = np.cross(normal, u)
    matrix = vtk.vtkMatrix4x4()
    for row in range(3):
        for column, axis in enumerate((u, v, normal)):
            matrix.SetElement(row, column, axis[row])
    view.GetSliceToRAS().DeepCopy(matrix)
    hints = logic.click_hints()
    assert hints.noise_mm == pytest.approx(0.4)  # half of the 0.8 mm in-plane voxel
    assert any(np.allclose(direction, normal) for direction in hints.directions)
    rng = np.random.default_rng(5)
    clicks = np.vstack([level * normal + 6.0 * np.column_stack([np.cos(a), np.sin(a)]) @ np.vstack([u, v])
                        for level in np.arange(0.0, 41.0, 8.0)
                        for a in [rng.random() + np.arange(6) * np.pi / 3]])
    points = add_points(scene, clicks, "Clicked on the oblique view")
    assert logic.request_fit(points)
    wait(logic, events)
    assert logic.status.state == "done", logic.status.message
    fit = logic.report_of(logic.model_for_points(points))["fit"]
    assert fit["slices"]["slices"] == 6 and fit["slices"]["contours"] == 6 and fit["slices"]["end_caps"] == 2
    assert fit["config"]["point_noise_mm"] == pytest.approx(0.4)
    assert "6 contours on 6 slices" in logic.status.message


def test_the_volume_under_the_clicks_reaches_the_fit_in_ras(scene, logic):
    """A click on the phantom CT's lumen wall samples the wall's intensity (half-way between the
    contrast lumen's 300 HU and the tissue's 40) through the hints the fit gets; under a linear
    transform the volume moves with it; unticked, no image goes to the fit."""
    from test_web_app import _wall_points

    volume = logic.add_phantom_ct(spacing_mm=(1.0, 1.0, 1.0))
    phantom = phantoms.aaa_lumen()
    wall = np.vstack([_wall_points(phantom, z) for z in (40.0, 60.0)])
    centre = np.vstack([w.mean(axis=0) for w in np.split(wall, 2)])
    hints = logic.click_hints(wall)
    on_wall = hints.image.sample(wall)
    assert 100 < np.median(on_wall) < 240 and np.all(hints.image.sample(centre) > 240)
    assert hints.image.array.size < slicer.util.arrayFromVolume(volume).size  # cropped around the clicks
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    moved = wall + [10.0, 0.0, 0.0]
    assert np.allclose(logic.click_hints(moved).image.sample(moved), on_wall, atol=1e-3)
    logic.settings.use_image = False
    assert logic.click_hints(moved).image is None


# --- Nested walls and Blend panels ---------------------------------------------------------------

@pytest.fixture(scope="module")
def wall_points():
    walls = phantoms.aaa_nested()
    return {name: mesh.sample_points_on_mesh(walls[name].mesh(voxel_mm=1.5), 48, seed=3) for name in walls}


def test_nested_walls_bad_input(scene, logic, wall_points):
    lumen = add_points(scene, wall_points["lumen"], "lumen")
    assert logic.request_nested_fit({"lumen": lumen}) is False and "outer wall" in logic.status.message
    assert logic.request_nested_fit({"lumen": lumen, "outer_wall": lumen}) is False
    assert logic.request_nested_fit({"lumen": lumen, "aorta": lumen}) is False
    assert logic.request_nested_fit({"lumen": lumen, "outer_wall": add_points(scene, [])}) is False
    assert logic.request_nested_fit({"lumen": lumen}, mode="loose") is False
    assert logic.models() == []


def test_nested_walls_end_to_end(scene, logic, events, wall_points):
    nodes = {wall: add_points(scene, pts, wall) for wall, pts in wall_points.items()}
    assert logic.request_nested_fit(nodes, "guaranteed"), logic.status.message
    wait(logic, events)
    assert logic.status.state == "done", logic.status.message
    for wall, node in nodes.items():
        model = logic.model_for_points(node, wall)
        assert model is not None and model.GetPolyData().GetNumberOfPoints() > 0
        assert model.GetDisplayNode().GetColor() == pytest.approx(STRUCTURE_COLOURS[wall])
    lumen = logic.model_for_points(nodes["lumen"], "lumen")
    sdf = decode_network(lumen.GetAttribute(ATTRIBUTE_NETWORK))
    box = sdf.bounds_with_margin()
    samples = np.random.default_rng(0).uniform(box[0::2], box[1::2], size=(2000, 3))
    values = sdf(samples, output=None)
    names = list(sdf.output_names)
    order = [names.index(wall) for wall in ("lumen", "inner_wall", "outer_wall")]
    assert np.all(values[:, order[0]] >= values[:, order[1]] - 1e-4)  # lumen inside the inner wall
    assert np.all(values[:, order[1]] >= values[:, order[2]] - 1e-4)  # inside the outer wall


@pytest.fixture(scope="module")
def branch_points():
    tree = phantoms.vessel_tree()
    return [mesh.sample_points_on_mesh(tree[0].mesh(voxel_mm=1.5), 60, seed=4),
            mesh.sample_points_on_mesh(tree[-1].mesh(voxel_mm=1.0), 40, seed=5)]


def test_blend_bad_input(scene, logic, events, lumen_points):
    points = add_points(scene, lumen_points[:60])
    logic.request_fit(points)
    wait(logic, events)
    fitted = logic.model_for_points(points)
    plain = scene.AddNewNodeByClass("vtkMRMLModelNode", "Not fitted")
    before = node_count(scene)
    assert logic.request_blend([fitted], 2.0) is False and "two" in logic.status.message
    assert logic.request_blend([fitted, plain], 2.0) is False and "Not fitted" in logic.status.message
    assert logic.request_blend([fitted, fitted], -1.0) is False
    assert node_count(scene) == before


def test_blend_end_to_end(scene, logic, events, branch_points, tmp_path):
    nodes = [add_points(scene, pts, f"Branch {i}") for i, pts in enumerate(branch_points)]
    for node in nodes:
        assert logic.request_fit(node)
    wait(logic, events)
    models = [logic.model_for_points(node) for node in nodes]
    assert logic.request_blend(models, 2.0), logic.status.message
    wait(logic, events)
    assert logic.status.state == "done", logic.status.message
    blend = logic.model_for_blend(models)
    assert blend is not None and blend.GetAttribute(ATTRIBUTE_STRUCTURE) == "blend"
    assert blend.GetPolyData().GetNumberOfPoints() > 0

    reloaded = save_and_reload(scene, tmp_path)
    again = SceneLogic(reloaded, events.post, debounce_s=0.05)
    again.settings = QUICK
    try:
        sources = again.models("vessel")
        assert again.request_blend(sources, 4.0)
        wait(again, events)
        assert again.status.state == "done", again.status.message
        assert len(again.models("blend")) == 1  # the saved blend was updated in place
        assert json.loads(again.models("blend")[0].GetAttribute("VascularINR.BlendK")) == 4.0
    finally:
        again.shutdown()


def test_cfd_export_from_planes_the_user_moved(scene, logic, events, tmp_path):
    """Clicks on axial slices of the phantom -> fitted model -> one plane per end (inside the clicked
    span, square to the vessel) -> the user moves the inlet's plane and names another end the inlet ->
    the CFD folder and a model coloured by its faces."""
    from VascularINRLib.annotator import click_slices
    from VascularINRLib.cfd_files import read_ascii_stl_solids
    from VascularINRLib.scene import ATTRIBUTE_CUT, REFERENCE_CFD_SOURCE

    clicks = click_slices(phantoms.aaa_lumen().mesh(), 8.0, 6, 0.3, "z", 0)
    points = add_points(scene, clicks.points, "Clicks")
    logic.settings = FitSettings("fast", 128, "cpu", {"max_iterations": 500})
    assert logic.request_fit(points)
    wait(logic, events)
    model = logic.model_for_points(points)
    assert not logic.request_cfd_export(model, tmp_path / "none")
    assert "no cut planes" in logic.status.message
    planes = logic.propose_cfd_cuts(model)
    assert [logic.cut_of_plane(p).name for p in planes] == ["inlet", "outlet_1", "outlet_2"]
    low, high = clicks.points[:, 2].min(), clicks.points[:, 2].max()
    for plane in planes:
        assert plane.GetNodeReferenceID(REFERENCE_CFD_SOURCE) == model.GetID()
        assert low < plane.GetCenterWorld()[2] < high  # inside the span the user clicked
        assert abs(plane.GetNormalWorld()[2]) > 0.9  # the phantom runs along z
    inlet = planes[0]
    centre = np.array(inlet.GetCenterWorld()) - 3.0 * np.array(inlet.GetNormalWorld())
    inlet.SetCenterWorld(*centre)
    logic.set_cfd_inlet(model, planes[1])
    assert logic.cut_of_plane(planes[1]).name == "inlet" and logic.cut_of_plane(planes[0]).name == "outlet_1"
    assert logic.cfd_planes(model)[0] is planes[1]
    for bad in [dict(units="inch"), dict(edge_length_mm=-1.0), dict(extend_diameters=float("nan"))]:
        assert not logic.request_cfd_export(model, tmp_path / "bad", **bad)
        assert logic.status.state == "error"
    folder = tmp_path / "cfd"
    assert logic.request_cfd_export(model, folder, units="cm")
    wait(logic, events)
    assert logic.status.state == "done", logic.status.message
    assert "exported for CFD" in logic.status.message
    cfd_model = logic.models("cfd")[0]
    labels = numpy_support.vtk_to_numpy(cfd_model.GetPolyData().GetCellData().GetArray("ModelFaceID"))
    assert sorted(set(labels.tolist())) == [1, 2, 3, 4]
    assert cfd_model.GetDisplayNode().GetActiveScalarName() == "ModelFaceID"
    report = json.loads((folder / "cfd.json").read_text())
    assert report["units"] == "cm" and report["checks"]["boundary_edges"] == 0
    moved = next(face for face in report["faces"] if face["name"] == "cap_outlet_1")
    assert np.allclose(np.array(moved["centre"]) * 10.0, centre, atol=0.6)  # the plane the user moved, in cm
    assert set(read_ascii_stl_solids(folder / "model.stl")) == {"wall", "cap_inlet", "cap_outlet_1", "cap_outlet_2"}
    assert all(plane.GetAttribute(ATTRIBUTE_CUT) for plane in planes)
    # a folder of other files is refused, and a second export updates the same CFD model
    assert not logic.request_cfd_export(model, tmp_path)
    assert logic.request_cfd_export(model, folder, extend_diameters=2.0)
    wait(logic, events)
    assert logic.models("cfd") == [cfd_model] and logic.status.state == "done"


@pytest.mark.parametrize("overrides, named", [({"max_iterations": -5}, "max_iterations"),
                                              ({"time_limit_s": float("nan")}, "time_limit_s"),
                                              ({"width": 10 ** 6}, "width"), ({"not_a_setting": 1}, "not_a_setting")])
def test_hostile_settings_are_an_error_status_not_an_untrained_model(scene, logic, events, lumen_points, overrides,
                                                                     named):
    """Issue 20: values that gave an untrained surface from the command line give an error status here."""
    logic.settings = FitSettings("fast", 48, "cpu", overrides)
    points = add_points(scene, lumen_points[:60])
    before = node_count(scene)
    logic.request_fit(points)
    wait(logic, events)
    assert logic.status.state == "error" and named in logic.status.message.lower(), logic.status.message
    assert node_count(scene) == before and logic.models() == []


def test_hostile_blend_and_export_values_are_refused(scene, logic, events, lumen_points, tmp_path):
    """Values a front end could pass on unchecked: refused with a status, the scene and folder unchanged."""
    points = add_points(scene, lumen_points[:60])
    logic.request_fit(points)
    wait(logic, events)
    fitted = logic.model_for_points(points)
    before = node_count(scene)
    for k in (float("nan"), float("inf"), "2"):  # the k check comes before the one on models given twice
        assert logic.request_blend([fitted, fitted], k) is False and "smoothing k" in logic.status.message
    (tmp_path / "taken.stl").mkdir()
    assert logic.export_model(fitted, tmp_path / "taken.stl") is None and "folder" in logic.status.message
    assert node_count(scene) == before and sorted(p.name for p in tmp_path.iterdir()) == ["taken.stl"]

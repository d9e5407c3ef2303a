"""Offscreen pictures (PNG) of surfaces and points with VTK; no display needed (EGL or OSMesa)."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np
import vtk

from .files import atomic_output

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

SURFACE_COLOURS = [(0.85, 0.25, 0.2), (0.95, 0.8, 0.3), (0.3, 0.55, 0.9), (0.5, 0.8, 0.4)]


def _points_actor(points_mm: np.ndarray, radius_px: float = 6.0) -> vtk.vtkActor:
    points = vtk.vtkPoints()
    for p in np.asarray(points_mm, dtype=np.float64):
        points.InsertNextPoint(*p)
    cloud = vtk.vtkPolyData()
    cloud.SetPoints(points)
    glyphs = vtk.vtkVertexGlyphFilter()
    glyphs.SetInputData(cloud)
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(glyphs.GetOutputPort())
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(1.0, 0.95, 0.1)
    actor.GetProperty().SetPointSize(radius_px)
    actor.GetProperty().SetRenderPointsAsSpheres(True)
    return actor


def _principal_axes(surfaces: Sequence[vtk.vtkPolyData]) -> np.ndarray:
    from vtk.util import numpy_support

    points = np.concatenate([numpy_support.vtk_to_numpy(s.GetPoints().GetData()) for s in surfaces
                             if s.GetNumberOfPoints()])
    _, _, vt = np.linalg.svd(points - points.mean(axis=0), full_matrices=False)
    return vt


def render_png(path, surfaces: Sequence[vtk.vtkPolyData], points_mm: Optional[np.ndarray] = None,
               colours: Optional[Sequence[Tuple[float, float, float]]] = None,
               opacities: Optional[Sequence[float]] = None, size=(900, 900),
               view: str = "anterior", title: Optional[str] = None, show_edges: bool = False) -> str:
    """Render surfaces (and points) to a PNG; view 'anterior' looks at RAS coordinates from the front,
    'broadside' across the surfaces' flattest direction;
    `show_edges` draws the triangles' edges."""
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    for index, polydata in enumerate(surfaces):
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(polydata)
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        colour = (colours or SURFACE_COLOURS)[index % len(colours or SURFACE_COLOURS)]
        actor.GetProperty().SetColor(*colour)
        actor.GetProperty().SetOpacity(opacities[index] if opacities else 1.0)
        actor.GetProperty().SetSpecular(0.3)
        if show_edges:
            actor.GetProperty().EdgeVisibilityOn()
            actor.GetProperty().SetEdgeColor(0.15, 0.15, 0.15)
            actor.GetProperty().SetLineWidth(0.6)
        renderer.AddActor(actor)
    if points_mm is not None and len(points_mm):
        renderer.AddActor(_points_actor(points_mm))
    if title:
        text = vtk.vtkTextActor()
        text.SetInput(title)
        text.GetTextProperty().SetColor(0.1, 0.1, 0.1)
        text.GetTextProperty().SetFontSize(22)
        text.SetPosition(12, 12)
        renderer.AddViewProp(text)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(0, 0, 0)
    if view == "broadside":  # across the shape's flattest direction, its longest one upwards
        axes = _principal_axes(surfaces)
        camera.SetPosition(*axes[2])
        camera.SetViewUp(*axes[0])
        camera.Azimuth(30.0)  # from the side and above, so that flat ends show
        camera.Elevation(40.0)
        camera.OrthogonalizeViewUp()
    else:
        camera.SetPosition(*((0, 1, 0) if view == "anterior" else (1, 0, 0)))
        camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    with atomic_output(path, verify=_check_png) as temporary:
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(temporary)
        writer.SetInputConnection(grab.GetOutputPort())
        writer.Write()
    window.Finalize()
    return str(path)


def _check_png(path: str) -> bool:
    """VTK's PNG writer says nothing when the disk fills up: a complete PNG ends with its IEND chunk."""
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - 12))
        return b"IEND" in handle.read()

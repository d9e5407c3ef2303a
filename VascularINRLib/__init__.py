"""VascularINR: sparse points on a vessel wall -> a watertight vessel surface held in a neural SDF.

    from VascularINRLib import fit_points, extract_surface, write_mesh
    result = fit_points(points_mm)                  # (N, 3) world mm, unoriented
    surface = extract_surface(result.sdf, points_mm=result.points_mm)
    write_mesh(surface.polydata, "vessel.stl")

Modules are imported on first use so that `import VascularINRLib` stays cheap.
"""
import importlib
import time

__version__ = "0.1.0"
IMPORTED_AT = time.time()  # the Slicer module re-imports the library when a file changed since (reload)

_EXPORTS = {
    "fit_points": "fitting", "preset": "fitting", "FitConfig": "fitting", "PRESETS": "fitting",
    "FitResult": "fitting", "FitProgress": "fitting",
    "NeuralSDF": "neural_sdf", "SDFNetwork": "network", "Normalization": "normalization",
    "extract_surface": "surface", "evaluate_grid": "surface",
    "compare": "metrics", "dice": "metrics", "surface_distances": "metrics",
    "read_points": "points_io", "write_points": "points_io", "check_points": "points_check",
    "read_mesh": "mesh", "write_mesh": "mesh", "sample_points_on_mesh": "mesh",
    "read_volume": "volume", "Volume": "volume",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "render_png": "render", "phantoms": None,
    "fit_nested": "nested", "blend": "blending",
    "InputError": "errors", "FitCancelled": "errors", "VascularINRError": "errors",
}


def forget_if_edited() -> bool:
    """Remove this package's modules from `sys.modules` when a file of one of them changed after it was
    imported, so that the next import reads the edit (Slicer's module reload re-runs only the module's
    own file). True when they were removed."""
    import sys
    from pathlib import Path

    loaded = {name: module for name, module in sys.modules.items()
              if name == __name__ or name.startswith(__name__ + ".")}
    for module in loaded.values():
        path = getattr(module, "__file__", None)
        if path and Path(path).is_file() and Path(path).stat().st_mtime > IMPORTED_AT:
            for name in loaded:
                del sys.modules[name]
            return True
    return False


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'VascularINRLib' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = sorted(_EXPORTS)

"""Makes the README tutorial's pictures (docs/tutorial/*.png) with the browser app on the built-in phantom CT.

    python docs/tutorial/make_pictures.py [-o docs/tutorial]

Runs `vascular-inr serve` (the phantom CT), drives it in headless chromium as a user would (the helpers
of Testing/test_web_app.py: Testing/install_browser.sh installs chromium and playwright) and saves one
picture a step: the CT, the first slice clicked, the fitted surface, the large view turned coronal, the
ends found for CFD. The browser app shows Slicer's own slice and 3D views (trame-slicer) and the same
workflow as the Slicer module's panel.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Testing"))
sys.path.insert(0, str(ROOT))

from test_web_app import _opened, _Page, _serve, _wall_points  # noqa: E402

LEVELS_MM = tuple(float(z) for z in range(30, 111, 10))  # axial slices every 10 mm, neck to neck of the aneurysm
ANGLES_DEG = (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)  # six clicks a slice
WIDTH_PX = 1000  # the pictures' width in the README


def save(page, path: Path) -> None:
    """The page, downscaled to WIDTH_PX wide, in 256 colours (a fifth of the bytes, no visible change)."""
    import matplotlib.image
    from PIL import Image

    pixels = matplotlib.image.imread(io.BytesIO(page.screenshot()), format="png")
    image = Image.fromarray((pixels[..., :3] * 255).astype(np.uint8))
    image = image.resize((WIDTH_PX, round(image.height * WIDTH_PX / image.width)), Image.LANCZOS)
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)

    import test_web_app
    from VascularINRLib import phantoms

    test_web_app.ANGLES = np.radians(ANGLES_DEG)
    phantom = phantoms.aaa_lumen()
    with tempfile.TemporaryDirectory() as folder:
        serving = _serve(Path(folder))
        server = next(serving)
        try:
            with _opened(server["url"]) as page:
                helper = _Page(page)
                axial = helper.large_view()
                page.wait_for_timeout(1500)
                save(page, args.output / "1_load.png")

                count = 0
                for index, level in enumerate(LEVELS_MM):
                    view = helper.move_large_view(level)
                    for point in _wall_points(phantom, level):
                        count = helper.click_at(axial, view, point)
                    if index == 0:
                        page.wait_for_timeout(800)
                        save(page, args.output / "2_click.png")
                helper.wait_for(lambda i: not i["busy"] and i["models"] and i["models"][0]["fit"] == count
                                and i["status"]["state"] == "done", "the fit of all points", timeout_s=240)
                view = helper.move_large_view(75.0)  # between two clicked slices: the outline of the fit
                page.wait_for_timeout(2000)
                save(page, args.output / "3_surface.png")

                centre = _wall_points(phantom, 75.0).mean(axis=0)
                page.locator("#vinr-main-view").click(force=True)
                page.locator(".v-overlay .v-list-item", has_text="Coronal").click()
                page.wait_for_timeout(1500)
                helper.move_large_view(round(float(centre[1]), 1))
                page.wait_for_timeout(2000)
                save(page, args.output / "4_check.png")

                page.click("#vinr-cfd-ends")
                helper.wait_for(lambda i: len(i.get("cfd_ends", [])) >= 1, "the ends")
                page.wait_for_timeout(2000)
                save(page, args.output / "5_cfd.png")
        finally:
            serving.close()


if __name__ == "__main__":
    main()

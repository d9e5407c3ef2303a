"""The Slicer Extensions Catalog's description checks that can run offline, against VascularINR.json and
the extension's CMakeLists.txt.

Written from Slicer/ExtensionsIndex `scripts/check_description_files.py` (main at 07f1d1b2, the same on
5.12; the PR workflow runs it) and the catalog entry schema v1.0.1/v1.0.2 (Slicer/Slicer `Schemas/`):
what they require, in our own code. The network checks (cloning the repository, the schema download,
the GitHub topic, downloading the icon and screenshots) cannot run here; their offline part can: the
image URLs must name files of this repository.
"""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "VascularINR.json"
CMAKE = (ROOT / "CMakeLists.txt").read_text()

# the catalog's accepted categories near what VascularINR does (its full list has 61 names)
ACCEPTED_NEARBY = {"Vascular Modeling Toolkit", "Surface Models", "Segmentation", "Cardiac", "Quantification"}
SCHEMA_KEYS = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
               "scm_url", "tier", "enabled", "dicom_support_rule"}
LICENSE_NAMES = ["LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt"]
RAW = "https://raw.githubusercontent.com/VascularINR/VascularINR/main/"


def _cmake(name: str, quoted: bool = True) -> str:
    """`set(NAME "value")` as the catalog's regexes read it (quotes required for the image URLs)."""
    pattern = rf'set\s*\({name}\s*"([^"]+)"[ ]*\)' if quoted else rf"set\s*\({name}\s+([^\s\)]+)\)"
    match = re.search(pattern, CMAKE, re.I | re.M)
    assert match, f"{name} is not set the way the catalog reads it"
    return match.group(1)


def test_entry_follows_the_schema_and_the_index_layout():
    text = ENTRY.read_bytes()
    assert b"\r" not in text  # LF only
    entry = json.loads(text)
    assert {"$schema", "category", "scm_url"} <= set(entry) <= SCHEMA_KEYS
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/")
    assert entry["scm_type"] in ("git", "local") and isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5
    assert all(isinstance(d, str) for d in entry["build_dependencies"])
    assert json.dumps(entry, indent=2, ensure_ascii=False) + "\n" == text.decode()  # the index's prettier layout


def test_names_category_and_url():
    entry = json.loads(ENTRY.read_text())
    name = ENTRY.stem
    assert not name.lower().startswith("slicer")
    project = re.search(r"project\s*\(\s*([^\s\)\n\r]+)", CMAKE, re.I | re.M).group(1).strip("\"'")
    assert project == name
    assert entry["category"] in ACCEPTED_NEARBY and _cmake("EXTENSION_CATEGORY") == entry["category"]
    scheme = entry["scm_url"].split("://", 1)[0]
    assert "://" in entry["scm_url"] and scheme in ("git", "https")
    # The catalog wants a repository name that starts with "Slicer", except for tools usable without Slicer
    # (its exception list): the description says why this one does not.
    repository = Path(entry["scm_url"].strip().strip("/")).stem
    assert repository.startswith("Slicer") or "without Slicer" in _cmake("EXTENSION_DESCRIPTION")


def test_dependencies_agree_and_name_pytorch():
    entry = json.loads(ENTRY.read_text())
    depends = _cmake("EXTENSION_DEPENDS").split()
    assert depends == entry["build_dependencies"] == ["PyTorch"]
    requirements = (ROOT / "VascularINR" / "Resources" / "requirements.txt").read_text()
    assert re.search(r"^torch>=2\.3", requirements, re.M)  # NumPy 2 (Slicer 5.10) needs torch >= 2.3


def test_license_and_readme_are_ours():
    present = [name for name in LICENSE_NAMES if (ROOT / name).is_file()]
    assert present, "the catalog wants a license file at the repository's root"
    text = (ROOT / present[0]).read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
    # unset, UseSlicer.cmake packages Slicer's own License.txt and README.md with the extension
    assert _cmake("EXTENSION_LICENSE_FILE", quoted=False) == "${CMAKE_CURRENT_SOURCE_DIR}/" + present[0]
    assert _cmake("EXTENSION_README_FILE", quoted=False) == "${CMAKE_CURRENT_SOURCE_DIR}/README.md"


def test_icon_and_screenshots_are_files_of_this_repository():
    urls = [_cmake("EXTENSION_ICONURL")] + _cmake("EXTENSION_SCREENSHOTURLS").split()
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(RAW) and url.lower().endswith((".png", ".jpg", ".jpeg", ".gif")), url
        assert (ROOT / url[len(RAW):]).is_file(), url


def test_contributors_and_documentation_link():
    contributors = _cmake("EXTENSION_CONTRIBUTORS")
    assert contributors.strip() and "(" in contributors  # Slicer's "Name (Affiliation)" form
    module = (ROOT / "VascularINR" / "VascularINR.py").read_text()
    assert "github.com/VascularINR/VascularINR#readme" in module and _cmake("EXTENSION_HOMEPAGE") in module

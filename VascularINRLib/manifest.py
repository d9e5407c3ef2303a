"""A batch manifest: the cases of `vascular-inr batch`, read from CSV or JSON and checked before any work.

A case is one vessel surface to fit: an `id`, its `points` (a points file) or a `mesh` to sample `n`
points from with `seed`, optionally a `reference` mesh (Dice and distances in the summary) and fit
options that override the batch's (`FIT_OPTIONS`). Cases that share a `group` are one tree or one
vessel's walls, and the group's `action` says what becomes of them:

- `blend`: each case is fitted on its own, then the group's vessels are blended into one surface
  (smooth union, `k` mm) once all of them are done;
- `nested`: the cases are the walls of one vessel (`wall`: lumen, inner_wall, outer_wall), fitted
  together in one task (`mode`: guaranteed, joint or separate).

CSV: a header line naming the columns, one case a line; '#' lines are comments. JSON: a list of
cases, or {"defaults": {...}, "cases": [...]}. Paths are relative to the manifest's folder.

Every case gets a key: a hash of its options and of the bytes of its input files. A case whose
folder holds a record with the same key is done and is not run again (resume).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .errors import InputError

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_CASES = 100_000
KEY_VERSION = "vascular-inr-batch-1"  # part of every key: change it when a case's outputs change meaning

# option: (type, check, what it must be)
FIT_OPTIONS = {
    "preset": (str, lambda v: v in ("fast", "paper"), "fast or paper"),
    "max_iterations": (int, lambda v: v >= 1, "a whole number, 1 or more"),
    "min_iterations": (int, lambda v: v >= 0, "a whole number, 0 or more"),
    "time_limit": (float, lambda v: 0 < v < math.inf, "a positive number of seconds"),
    "max_radius": (float, lambda v: 0 < v < math.inf, "a positive number of mm"),
    "point_noise": (float, lambda v: 0 <= v <= 10, "0..10 mm"),
    "slices": (str, lambda v: v in ("auto", "off"), "auto or off"),
    "far_field": (bool, lambda v: True, "yes or no"),
    "resolution": (int, lambda v: 8 <= v <= 1024, "a number of grid nodes in 8..1024"),
    "voxel": (float, lambda v: 0 < v < math.inf, "a positive number of mm"),
    "threads": (int, lambda v: 1 <= v <= 256, "a whole number of threads, 1 or more"),
}
CASE_FIELDS = {
    "n": (int, lambda v: 1 <= v <= 10_000_000, "a number of points in 1..10000000"),
    "seed": (int, lambda v: 0 <= v < 2 ** 32, "a whole number in 0..2^32-1"),
    "k": (float, lambda v: 0 <= v < math.inf, "0 (plain union) or a positive number of mm"),
    "wall": (str, lambda v: v in ("lumen", "inner_wall", "outer_wall"), "lumen, inner_wall or outer_wall"),
    "mode": (str, lambda v: v in ("guaranteed", "joint", "separate"), "guaranteed, joint or separate"),
    "action": (str, lambda v: v in ("blend", "nested"), "blend or nested"),
    "blend_voxel": (float, lambda v: 0.05 <= v <= 10, "0.05..10 mm"),
    "dice_voxel": (float, lambda v: 0.05 <= v <= 10, "0.05..10 mm"),
}
PATH_FIELDS = ("points", "mesh", "reference")
TEXT_FIELDS = ("id", "group")
KNOWN = set(FIT_OPTIONS) | set(CASE_FIELDS) | set(PATH_FIELDS) | set(TEXT_FIELDS)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
_YES = {"1", "yes", "true", "on"}
_NO = {"0", "no", "false", "off"}


@dataclass
class Case:
    id: str
    points: Optional[Path] = None
    mesh: Optional[Path] = None
    n: int = 400
    seed: int = 0
    reference: Optional[Path] = None
    dice_voxel: Optional[float] = None  # the grid of Dice against the reference (None: metrics' own)
    group: Optional[str] = None
    wall: Optional[str] = None
    options: Dict[str, object] = field(default_factory=dict)  # FIT_OPTIONS given for this case
    key: str = ""

    def inputs(self) -> List[Path]:
        return [p for p in (self.points, self.mesh, self.reference) if p is not None]

    def spec(self) -> dict:
        """What a worker needs (plain values: it travels to another process or machine)."""
        return {"id": self.id, "points": _text(self.points), "mesh": _text(self.mesh), "n": self.n,
                "seed": self.seed, "reference": _text(self.reference), "dice_voxel": self.dice_voxel,
                "group": self.group, "wall": self.wall,
                "options": dict(self.options), "key": self.key}


@dataclass
class Group:
    name: str
    action: str  # blend | nested
    members: List[str]  # case ids, in the manifest's order
    k: Optional[float] = 1.0  # blend: smooth-union width in mm (None: plain union)
    mode: str = "guaranteed"  # nested
    blend_voxel: float = 0.5  # blend: the grid the union is meshed on, mm
    options: Dict[str, object] = field(default_factory=dict)
    key: str = ""

    def spec(self) -> dict:
        return {"name": self.name, "action": self.action, "members": list(self.members), "k": self.k,
                "mode": self.mode, "blend_voxel": self.blend_voxel, "options": dict(self.options), "key": self.key}


@dataclass
class Manifest:
    path: Path
    cases: List[Case]
    groups: List[Group]

    def case(self, case_id: str) -> Case:
        return next(c for c in self.cases if c.id == case_id)

    def fitted_alone(self) -> List[Case]:
        """Cases that are one task each (every case but the walls of nested groups)."""
        nested = {name for g in self.groups if g.action == "nested" for name in g.members}
        return [c for c in self.cases if c.id not in nested]


def _text(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)


def _convert(kind, text, name: str, where: str):
    if isinstance(text, str):
        text = text.strip()
    try:
        if kind is bool:
            if isinstance(text, bool):
                return text
            if str(text).lower() in _YES:
                return True
            if str(text).lower() in _NO:
                return False
            raise ValueError
        if kind is int:
            if isinstance(text, bool):
                raise ValueError
            value = float(text)
            if not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(text, bool):
                raise ValueError
            return float(text)
        if not isinstance(text, str):
            raise ValueError
        return text
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{where}: {name} {text!r} is not {'a number' if kind in (int, float) else 'valid'}") \
            from None


def _value(table, name: str, raw, where: str):
    kind, check, expected = table[name]
    value = _convert(kind, raw, name, where)
    if isinstance(value, float) and not math.isfinite(value) or not check(value):
        raise InputError(f"{where}: {name} {raw!r} must be {expected}")
    return value


def _rows_from_csv(text: str, path: Path) -> List[tuple]:
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"{path}: no cases (a header line such as 'id,points' and one case a line)")
    dialect = "excel-tab" if "\t" in lines[0][1] and "," not in lines[0][1] else "excel"
    header_number, header_line = lines[0]
    header = [h.strip().lower() for h in next(csv.reader([header_line], dialect=dialect))]
    unknown = [h for h in header if h not in KNOWN]
    if unknown:
        raise InputError(f"{path}, line {header_number}: unknown column {unknown[0]!r} "
                         f"(known: {', '.join(sorted(KNOWN))})")
    if "id" not in header:
        raise InputError(f"{path}, line {header_number}: the header names no 'id' column")
    if len(set(header)) != len(header):
        raise InputError(f"{path}, line {header_number}: a column is named twice")
    rows = []
    for number, line in lines[1:]:
        cells = next(csv.reader(io.StringIO(line), dialect=dialect))
        if len(cells) > len(header):
            raise InputError(f"{path}, line {number}: {len(cells)} values for {len(header)} columns")
        rows.append((f"{path}, line {number}", number,
                     {h: c for h, c in zip(header, cells) if c.strip() != ""}))
    return rows


def _rows_from_json(text: str, path: Path) -> List[tuple]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not JSON ({error.msg}, line {error.lineno})") from None
    defaults = {}
    if isinstance(data, dict):
        defaults = data.get("defaults", {})
        data = data.get("cases")
    if not isinstance(data, list) or not isinstance(defaults, dict):
        raise InputError(f"{path}: expected a list of cases or {{\"defaults\": {{...}}, \"cases\": [...]}}")
    rows = []
    for number, entry in enumerate(data, start=1):
        if not isinstance(entry, dict):
            raise InputError(f"{path}, case {number}: a case is an object such as {{\"id\": ..., \"points\": ...}}")
        merged = {str(k).lower(): v for k, v in {**defaults, **entry}.items() if v is not None}
        unknown = [k for k in merged if k not in KNOWN]
        if unknown:
            raise InputError(f"{path}, case {number}: unknown field {unknown[0]!r} (known: {', '.join(sorted(KNOWN))})")
        rows.append((f"{path}, case {number}", number, merged))
    return rows


def read_manifest(path, defaults: Optional[Dict[str, object]] = None) -> Manifest:
    """Read and check a manifest; `defaults` are FIT_OPTIONS for cases that do not give their own.
    Every problem is an InputError naming the file and the line (or case number)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise InputError(f"{path}: cannot read the manifest ({error.strerror})") from None
    if not path.is_file():
        raise InputError(f"{path}: the manifest is not a file")
    if size > MAX_MANIFEST_BYTES:
        raise InputError(f"{path}: {size} bytes, more than a manifest of {MAX_MANIFEST_BYTES} bytes holds")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (UTF-8)") from None
    rows = _rows_from_json(text, path) if path.suffix.lower() == ".json" else _rows_from_csv(text, path)
    if not rows:
        raise InputError(f"{path}: no cases")
    if len(rows) > MAX_CASES:
        raise InputError(f"{path}: {len(rows)} cases, more than {MAX_CASES} in one manifest")
    cases, group_rows, seen = [], {}, set()
    for where, _, row in rows:
        case, group_fields = _case(row, where, path.parent, defaults or {})
        if case.id in seen:
            raise InputError(f"{where}: the id {case.id!r} is given twice")
        seen.add(case.id)
        cases.append(case)
        if case.group is not None:
            group_rows.setdefault(case.group, []).append((where, case, group_fields))
    groups = [_group(name, members) for name, members in group_rows.items()]
    taken = {c.id for c in cases}
    for group in groups:
        if group.name in taken:
            raise InputError(f"{path}: the group {group.name!r} has the name of a case")
    manifest = Manifest(path, cases, groups)
    for case in cases:
        case.key = _key({"case": case.spec(), "files": [_digest(p, path) for p in case.inputs()]})
    for group in groups:
        group.key = _key({"group": group.spec(), "members": [manifest.case(m).key for m in group.members]})
    return manifest


def _case(row: dict, where: str, folder: Path, defaults: Dict[str, object]):
    """The case of one row, and the group settings (action, k, mode) it gives."""
    case_id = str(row.get("id", "")).strip()
    if not _NAME.match(case_id):
        raise InputError(f"{where}: id {case_id!r} must be 1-100 letters, digits, '.', '_', '+' or '-' "
                         f"(it names the case's folder)")
    paths = {}
    for name in PATH_FIELDS:
        if name in row:
            if not isinstance(row[name], str) or not row[name].strip():
                raise InputError(f"{where}: {name} must be a file name")
            given = Path(row[name].strip()).expanduser()
            paths[name] = given if given.is_absolute() else folder / given
    if ("points" in paths) == ("mesh" in paths):
        raise InputError(f"{where}: give either points (a points file) or mesh (a surface to sample n points "
                         f"from), not {'both' if paths else 'neither'}")
    options = {name: _value(FIT_OPTIONS, name, value, where) for name, value in defaults.items() if value is not None}
    options.update({name: _value(FIT_OPTIONS, name, row[name], where) for name in FIT_OPTIONS if name in row})
    if "resolution" in options and "voxel" in options:
        if any(name in row for name in ("resolution", "voxel")):
            options.pop("voxel" if "resolution" in row else "resolution")
        else:
            raise InputError(f"{where}: give resolution or voxel, not both")
    fields = {name: _value(CASE_FIELDS, name, row[name], where) for name in CASE_FIELDS if name in row}
    if "n" in fields and "mesh" not in paths:
        raise InputError(f"{where}: n (points to sample) needs a mesh")
    group = row.get("group")
    if group is not None:
        group = str(group).strip()
        if not _NAME.match(group):
            raise InputError(f"{where}: group {group!r} must be 1-100 letters, digits, '.', '_', '+' or '-'")
    for name in ("action", "k", "mode", "wall", "blend_voxel"):
        if name in fields and group is None:
            raise InputError(f"{where}: {name} belongs to a group: give the case a group")
    case = Case(case_id, paths.get("points"), paths.get("mesh"), fields.get("n", 400), fields.get("seed", 0),
                paths.get("reference"), fields.get("dice_voxel"), group, fields.get("wall"), options)
    return case, {name: fields[name] for name in ("action", "k", "mode", "blend_voxel")
                  if name in fields}


def _group(name: str, members: List[tuple]) -> Group:
    settled: Dict[str, tuple] = {}
    for where, case, group_fields in members:
        for field_name, value in group_fields.items():
            if field_name in settled and settled[field_name][0] != value:
                raise InputError(f"{where}: group {name!r} has {field_name} {settled[field_name][0]!r} on "
                                 f"{settled[field_name][1]} and {value!r} here")
            settled.setdefault(field_name, (value, where))
    first_where = members[0][0]
    action = settled.get("action", ("blend", None))[0]
    cases = [case for _, case, _ in members]
    if action == "blend":
        if len(cases) < 2:
            raise InputError(f"{first_where}: group {name!r} blends {len(cases)} vessel: it needs 2 or more")
        if any(c.wall for c in cases):
            raise InputError(f"{first_where}: group {name!r} blends vessels: wall is for nested groups")
        k = settled.get("k", (1.0, None))[0]
        return Group(name, action, [c.id for c in cases], None if k == 0 else k,
                     blend_voxel=settled.get("blend_voxel", (0.5, None))[0])
    walls = [c.wall for c in cases]
    if None in walls:
        where = members[walls.index(None)][0]
        raise InputError(f"{where}: group {name!r} is nested: every case names its wall (lumen, inner_wall, "
                         f"outer_wall)")
    if len(set(walls)) != len(walls) or "lumen" not in walls or "outer_wall" not in walls:
        raise InputError(f"{first_where}: group {name!r} is nested: it needs one lumen and one outer_wall "
                         f"(and at most one inner_wall), got {', '.join(walls)}")
    options = [c.options for c in cases]
    if any(o != options[0] for o in options):
        raise InputError(f"{first_where}: the walls of group {name!r} are fitted together: give them the same "
                         f"fit options")
    return Group(name, "nested", [c.id for c in cases], None, mode=settled.get("mode", ("guaranteed", None))[0],
                 options=dict(options[0]))


_digests: Dict[tuple, str] = {}


def _digest(path: Path, manifest: Path) -> str:
    """SHA-256 of a file's bytes ('missing' when it cannot be read: the case then fails when it runs)."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    cache_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _digests:
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            return "missing"
        _digests[cache_key] = digest.hexdigest()
    return _digests[cache_key]


def _key(content: dict) -> str:
    text = json.dumps({"version": KEY_VERSION, **content}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

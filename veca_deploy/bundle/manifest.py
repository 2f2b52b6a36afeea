"""The bundle manifest: the contract between the machine that exports and the device that runs.

``DIR/manifest.json`` holds the schema version, the model, the preprocessing, the package
versions and one entry per artifact. Other tools read these key names: keep them stable.
numpy-free and torch-free on purpose.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..formats import FORMATS, PRECISIONS

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: the published JSON Schema of this version (also in docs/manifest.schema.json)
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def check_schema(d: Any, where: str = MANIFEST_NAME) -> None:
    """Validate a manifest dict against the published JSON Schema (one-line BundleError)."""
    import jsonschema

    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(d))
    if err is not None:
        loc = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise BundleError(f"{where}: does not match the manifest schema at {loc}: {err.message[:200]}")


@dataclass
class FileEntry:
    """A file an artifact needs besides its main ``path`` (e.g. OpenVINO's ``.bin``)."""

    path: str
    sha256: str
    bytes: int


@dataclass
class Artifact:
    """One runnable graph. ``cores`` is the tier it runs; an ``elastic`` artifact serves every
    entry of ``tiers`` (its ``cores`` is then the largest) and is told the tier at run time."""

    format: str
    precision: str
    cores: int
    height: int
    width: int
    path: str
    sha256: str
    bytes: int
    id: str = ""
    batch: int | str = "dynamic"
    #: largest batch a dynamic-batch artifact accepts (a TensorRT engine's profile max); None: any
    max_batch: int | None = None
    elastic: bool = False
    tiers: list[int] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    flops: int = 0
    params: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise BundleError(f"artifact {self.path!r}: unknown format {self.format!r}")
        if self.precision not in PRECISIONS:
            raise BundleError(f"artifact {self.path!r}: unknown precision {self.precision!r}")
        self.files = [f if isinstance(f, FileEntry) else FileEntry(**f) for f in self.files]
        if not self.id:
            self.id = artifact_id(self.format, self.precision, self.cores, self.height, self.width, self.elastic)
        if self.elastic and not self.tiers:
            raise BundleError(f"artifact {self.id}: elastic without tiers")
        if not self.tiers:
            self.tiers = [self.cores]

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    def all_files(self) -> list[tuple[str, str, int]]:
        return [(self.path, self.sha256, self.bytes)] + [(f.path, f.sha256, f.bytes) for f in self.files]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def artifact_id(fmt: str, precision: str, cores: int, h: int, w: int, elastic: bool = False) -> str:
    c = "elastic" if elastic else f"c{cores}"
    return f"{fmt}-{precision}-{c}-{h}x{w}"


@dataclass
class Manifest:
    model: dict[str, Any]
    preprocess: dict[str, Any]
    artifacts: list[Artifact] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created: str = ""
    tool: str = "veca-deploy"
    calibration: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: golden inputs/outputs (veca_deploy.compare.golden); optional, absent in older bundles
    golden: dict[str, Any] = field(default_factory=dict)
    #: set by ``veca-deploy pack``: the bundle this one was sliced from, for which device and why
    sliced: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["artifacts"] = [a.to_dict() for a in self.artifacts]
        if not d.get("sliced"):
            d.pop("sliced", None)  # only sliced bundles carry the section
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"

    def find(self, fmt: str | None = None, precision: str | None = None, cores: int | None = None,
             size: tuple[int, int] | None = None, elastic: bool | None = None) -> list[Artifact]:
        out = []
        for a in self.artifacts:
            if fmt is not None and a.format != fmt:
                continue
            if precision is not None and a.precision != precision:
                continue
            if cores is not None and cores not in a.tiers:
                continue
            if size is not None and a.size != tuple(size):
                continue
            if elastic is not None and a.elastic != elastic:
                continue
            out.append(a)
        return out

    def tiers(self) -> list[tuple[int, int, int]]:
        """Distinct (cores, height, width) served by any artifact, sorted."""
        return sorted({(c, a.height, a.width) for a in self.artifacts for c in a.tiers})

    def add(self, artifact: Artifact) -> None:
        """Add or replace (same id) an artifact."""
        self.artifacts = [a for a in self.artifacts if a.id != artifact.id] + [artifact]

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(d, dict):
            raise BundleError(f"{where}: expected a JSON object")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"{where}: unsupported schema_version {version!r} (this veca-deploy reads {SCHEMA_VERSION})")
        for key in ("model", "preprocess", "artifacts"):
            if key not in d:
                raise BundleError(f"{where}: missing field {key!r}")
        if not isinstance(d["artifacts"], list):
            raise BundleError(f"{where}: 'artifacts' must be a list")
        for key in ("model", "preprocess"):
            if not isinstance(d[key], dict):
                raise BundleError(f"{where}: {key!r} must be an object")
        for key in ("mean", "std"):
            v = d["preprocess"].get(key)
            if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                raise BundleError(f"{where}: preprocess.{key} must be a list of 3 numbers")
        if any(float(x) == 0 for x in d["preprocess"]["std"]):
            raise BundleError(f"{where}: preprocess.std must not contain 0")
        known = {f.name for f in dataclasses.fields(Artifact)}
        arts = []
        for i, a in enumerate(d["artifacts"]):
            if not isinstance(a, dict):
                raise BundleError(f"{where}: artifacts[{i}] must be an object")
            missing = [k for k in ("format", "precision", "cores", "height", "width", "path", "sha256", "bytes") if k not in a]
            if missing:
                raise BundleError(f"{where}: artifacts[{i}] lacks {', '.join(missing)}")
            _check_types(a, i, where)
            try:
                arts.append(Artifact(**{k: v for k, v in a.items() if k in known}))
            except (TypeError, ValueError) as e:
                raise BundleError(f"{where}: artifacts[{i}] is malformed ({e})") from None
            check_relative(arts[-1].path, where)
            for f in arts[-1].files:
                check_relative(f.path, where)
        check_schema(d, where)  # after the checks above, whose messages name the usual mistakes
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields and k != "artifacts"}
        try:
            return cls(artifacts=arts, **kw)
        except TypeError as e:
            raise BundleError(f"{where}: malformed manifest ({e})") from None


def _check_types(a: dict[str, Any], i: int, where: str) -> None:
    ints = ("cores", "height", "width", "bytes")
    for k in ints:
        if not isinstance(a[k], int) or isinstance(a[k], bool) or a[k] < 0:
            raise BundleError(f"{where}: artifacts[{i}].{k} must be a non-negative integer")
    for k in ("path", "sha256", "format", "precision"):
        if not isinstance(a[k], str) or not a[k]:
            raise BundleError(f"{where}: artifacts[{i}].{k} must be a non-empty string")
    if "tiers" in a and not (isinstance(a["tiers"], list) and all(isinstance(t, int) and not isinstance(t, bool) for t in a["tiers"])):
        raise BundleError(f"{where}: artifacts[{i}].tiers must be a list of integers")
    if "files" in a:
        if not isinstance(a["files"], list):
            raise BundleError(f"{where}: artifacts[{i}].files must be a list")
        for f in a["files"]:
            if not (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
                    and isinstance(f.get("bytes"), int)):
                raise BundleError(f"{where}: artifacts[{i}].files entries need path, sha256 and bytes")


def check_relative(rel: str, where: str = MANIFEST_NAME) -> None:
    """Refuse artifact paths that could leave the bundle folder (absolute, ``..``, drive letters)."""
    p = Path(rel)
    if not rel or p.is_absolute() or rel.startswith(("/", "\\")) or ".." in p.parts or ":" in rel or "\\" in rel:
        raise BundleError(f"{where}: artifact path {rel!r} escapes the bundle")


def resolve_inside(root: Path, rel: str) -> Path:
    """``root/rel`` after following symlinks, refusing anything that ends up outside ``root``."""
    check_relative(rel)
    root_real = root.resolve()
    target = (root / rel).resolve()
    if target != root_real and root_real not in target.parents:
        raise BundleError(f"artifact path {rel!r} resolves outside the bundle (symlink?)")
    return target


def read_manifest_bytes(directory: str | os.PathLike) -> bytes:
    """The raw bytes of ``DIR/manifest.json`` (what a signature covers), with one-line errors."""
    root = Path(directory)
    try:
        os.stat(root)
    except OSError as e:  # Path.exists() reads ELOOP as "missing": tell them apart
        if e.errno == errno.ELOOP:
            raise BundleError(f"{root}: symlink loop (its links lead back to themselves), not a bundle folder") from None
        if e.errno == errno.ENOENT and root.is_symlink():
            raise BundleError(f"{root}: symbolic link to {os.readlink(root)}, which does not exist") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise BundleError(f"{root}: no such bundle folder") from None
        raise BundleError(f"{root}: cannot open ({e.strerror or e})") from None
    if not root.is_dir():
        raise BundleError(f"{root}: not a folder (a bundle is a folder with {MANIFEST_NAME})")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{root}: no {MANIFEST_NAME} (not a bundle)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e})") from None


def parse_manifest(data: bytes, where: str) -> Manifest:
    try:
        d = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{where}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{where}: invalid JSON ({e.msg} at line {e.lineno})") from None
    return Manifest.from_dict(d, where)


def read_manifest(directory: str | os.PathLike) -> Manifest:
    return parse_manifest(read_manifest_bytes(directory), str(Path(directory) / MANIFEST_NAME))

"""Multi-view datasets: registry, verified lookup/download, generic registry-driven reading.

Everything about a dataset (files, checksums, sources, keys, layout, label base, scaling, K, N,
view names, the paper's per-dataset contrastive epochs) lives in ``registry.toml``
(``data/registry.toml`` in the repository, shipped inside the package). This module only knows a
handful of *reader kinds*:

- ``mat``: one ``.mat`` file; views under ``view_keys`` or inside the cell array
  ``cell_key`` at ``cell_indices``; optionally stored features x samples (``transposed``);
  labels under ``label_key``.
- ``fashion3v``: the 3-view Fashion set built from the raw Fashion-MNIST idx files
  (see :func:`build_fashion3v`).
- ``multicoil``: Multi-COIL-10/-20 built from ``COIL20.mat`` (see :func:`build_multicoil`).
- ``ccv_official_npy``: the official MFLVC CCV folder (``STIP.npy``, ``SIFT.npy``, ``MFCC.npy``,
  ``label.npy``).
- ``multiview_blobs``: no file; an entry marked ``generated`` is drawn by
  :func:`cmmc.synthetic.make_multiview_blobs` with any number of samples, from the caller's seed.

After reading, every dataset goes through the same steps: per-view scaling named in the registry,
float32 C-contiguous views, labels remapped to 0..K-1 (int64), and validation (same N for all
views and labels, finite values, N/K/dims as the registry says).

A user's own ``.npz`` or ``.mat`` file, outside the registry, is read by :func:`load_views_file`
(labels optional).

File lookup (:func:`fetch`): ``data_dir`` argument, then ``$CMMC_DATA_DIR``, then the cache
(``$CMMC_CACHE_DIR`` or ``~/.cache/cmmc``), then system paths named in the registry (the Debian
package of Fashion-MNIST). Every file is checked against its sha256 before use. A missing file
with a public source is downloaded with pooch into the cache.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from cmmc.scaling import SCALINGS, scale
from cmmc.synthetic import make_multiview_blobs
from cmmc.validation import check_labels, check_views

__all__ = [
    "Dataset",
    "build_fashion3v",
    "build_multicoil",
    "cache_dir",
    "data_dirs",
    "dataset_status",
    "fetch",
    "get_spec",
    "list_datasets",
    "load_dataset",
    "load_from_spec",
    "load_views_file",
    "read_idx",
]

_REGISTRY_PATH = Path(__file__).parent / "registry.toml"
_SCALINGS = tuple(SCALINGS)  # the scaling rules a registry entry or a user may name


# --------------------------------------------------------------------------------------------
# Dataset container
# --------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A multi-view dataset: ``views[m]`` is N x D_m float32, ``labels`` int64 in 0..K-1.

    ``labels`` and ``n_clusters`` are None for unlabelled data (a user's file without labels,
    :func:`load_views_file`). ``meta`` holds optional extras, e.g. ``source_index`` (N x M
    indices into the raw images) for the built datasets (Fashion, Multi-COIL).
    """

    name: str
    views: list[np.ndarray]
    labels: np.ndarray | None
    n_clusters: int | None
    view_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_samples(self) -> int:
        return int(self.views[0].shape[0] if self.labels is None else self.labels.shape[0])

    @property
    def n_views(self) -> int:
        return len(self.views)

    @property
    def dims(self) -> list[int]:
        return [int(v.shape[1]) for v in self.views]

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """Rows ``indices`` of every view (and labels); K is kept."""
        idx = np.asarray(indices)
        n = self.n_samples
        meta = {
            k: (v[idx] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == n else v)
            for k, v in self.meta.items()
        }
        return replace(
            self,
            views=[np.ascontiguousarray(v[idx]) for v in self.views],
            labels=None if self.labels is None else np.ascontiguousarray(self.labels[idx]),
            meta=meta,
        )

    def select_views(self, views: Sequence[int | str]) -> Dataset:
        """Views picked by index or name, in the given order."""
        idx = _resolve_views(views, self.view_names, self.name)
        meta = dict(self.meta)
        if isinstance(meta.get("source_index"), np.ndarray):
            meta["source_index"] = np.ascontiguousarray(meta["source_index"][:, idx])
        return replace(
            self,
            views=[self.views[i] for i in idx],
            view_names=[self.view_names[i] for i in idx],
            meta=meta,
        )


def _resolve_views(views: Sequence[int | str], names: Sequence[str], dataset: str) -> list[int]:
    if isinstance(views, (str, int)):
        views = [views]
    valid = f"valid: names {list(names)} or indices 0..{len(names) - 1}"
    out: list[int] = []
    lower = [n.lower() for n in names]
    for v in views:
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            if not 0 <= int(v) < len(names):
                raise ValueError(f"{dataset}: view index {v} out of range; {valid}")
            out.append(int(v))
        elif isinstance(v, str) and v.lower() in lower:
            out.append(lower.index(v.lower()))
        else:
            raise ValueError(f"{dataset}: unknown view {v!r}; {valid}")
    if not out:
        raise ValueError(f"{dataset}: no view selected; {valid}")
    if len(set(out)) != len(out):
        raise ValueError(f"{dataset}: view selected twice in {list(views)}")
    return out


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
@cache
def _registry() -> dict[str, dict[str, Any]]:
    with open(_REGISTRY_PATH, "rb") as f:
        return tomllib.load(f)["datasets"]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(" ", "")


def list_datasets() -> list[str]:
    """Names of all registry entries, in registry order."""
    return list(_registry())


def get_spec(name: str) -> dict[str, Any]:
    """A copy of the registry entry of ``name`` (case-insensitive; ``_`` = ``-``), plus ``name``."""
    reg = _registry()
    for key, spec in reg.items():
        if _norm(key) == _norm(name):
            out = copy.deepcopy(spec)
            out["name"] = key
            return out
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(reg)}")


# --------------------------------------------------------------------------------------------
# Locations, hashing, fetching
# --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$CMMC_CACHE_DIR`` or ``~/.cache/cmmc``: downloads and built arrays go here."""
    env = os.environ.get("CMMC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cmmc"


def data_dirs() -> list[Path]:
    """Folders searched: ``$CMMC_DATA_DIR`` (if set), the checkout's ``data/``, :func:`cache_dir`."""
    dirs = []
    env = os.environ.get("CMMC_DATA_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    repo_data = Path(__file__).resolve().parent.parent / "data"  # a source checkout's data/
    if repo_data.is_dir():
        dirs.append(repo_data)
    dirs.append(cache_dir())
    return dirs


_HASHES: dict[tuple[str, str, int, int], str] = {}


def _hash_file(path: Path, gunzip: bool = False) -> str:
    """sha256 of a file (or of its gunzipped payload), cached per path + mtime + size."""
    st = path.stat()
    key = (str(path.resolve()), "gz" if gunzip else "raw", st.st_mtime_ns, st.st_size)
    if key not in _HASHES:
        h = hashlib.sha256()
        with gzip.open(path, "rb") if gunzip else open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _verify(path: Path, entry: dict[str, Any]) -> bool | None:
    """True when the sha256 matches, None when the registry knows none; mismatch: ValueError."""
    expected = entry.get("sha256", "")
    if not expected:
        return None
    actual = _hash_file(path)
    if actual == expected:
        return True
    content = entry.get("content_sha256", "")
    if content and path.suffix == ".gz":
        try:
            if _hash_file(path, gunzip=True) == content:
                return True
        except (OSError, EOFError):
            pass
    raise ValueError(
        f"checksum mismatch for {entry['name']} at {path}: expected sha256 {expected}, "
        f"actual {actual}" + (f" (gunzipped payload expected {content})" if content else "")
    )


def _candidates(entry: dict[str, Any], data_dir: str | Path | None) -> list[Path]:
    name = entry["name"]
    dirs = ([Path(data_dir).expanduser()] if data_dir is not None else []) + data_dirs()
    out: list[Path] = []
    for d in dirs:
        out.append(d / name)
        base = Path(name).name
        if base != name:
            out.append(d / base)
    out += [Path(p) for p in entry.get("system_paths", [])]
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def _locate(entry: dict[str, Any], data_dir: str | Path | None) -> Path | None:
    for p in _candidates(entry, data_dir):
        if p.is_file():
            return p
    return None


def fetch(
    file_entry: dict[str, Any],
    download: bool = True,
    *,
    data_dir: str | Path | None = None,
    dataset: str | None = None,
    how_to_get: str | None = None,
) -> Path:
    """Path of a verified copy of the registry file ``file_entry``.

    Looks in ``data_dir``, :func:`data_dirs` and the entry's ``system_paths``; verifies the
    sha256 (ValueError on mismatch); if absent and the entry has a ``url`` and ``download`` is
    true, downloads it with pooch into :func:`cache_dir`. Otherwise FileNotFoundError naming the
    dataset, every place looked and how to get the file.
    """
    name = file_entry["name"]
    found = _locate(file_entry, data_dir)
    if found is not None:
        _verify(found, file_entry)
        return found
    looked = _candidates(file_entry, data_dir)
    url = file_entry.get("url", "")
    why = ""
    if url and download:
        target = cache_dir() / name
        try:
            import pooch

            target.parent.mkdir(parents=True, exist_ok=True)
            got = pooch.retrieve(
                url,
                known_hash=file_entry.get("download_known_hash") or None,
                fname=target.name,
                path=target.parent,
                progressbar=False,
            )
            path = Path(got)
            if not file_entry.get("download_known_hash"):
                try:
                    _verify(path, file_entry)
                except ValueError:
                    path.unlink(missing_ok=True)
                    raise
            return path
        except ValueError:
            raise
        except Exception as exc:  # offline, HTTP error, pooch hash error, ...
            why = f" Download from {url} failed: {type(exc).__name__}: {exc}."
    elif url:
        why = " Download disabled (download=False)."
    where = "; ".join(str(p) for p in looked)
    hint = how_to_get or (f"download it from {url}" if url else "no public source is known for it")
    raise FileNotFoundError(
        f"dataset {dataset or '?'}: file {name!r} not found. Looked in: {where}.{why} "
        f"How to get it: {hint}; or place the file {name} in $CMMC_DATA_DIR "
        f"(or pass data_dir=...)."
    )


# --------------------------------------------------------------------------------------------
# Raw readers
# --------------------------------------------------------------------------------------------
def _load_mat(path: Path) -> dict[str, Any]:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError:  # MATLAB v7.3 (HDF5)
        import h5py

        out: dict[str, Any] = {}
        with h5py.File(path, "r") as f:
            for k, v in f.items():
                if isinstance(v, h5py.Dataset):
                    out[k] = np.asarray(v).T
        return out


def _mat_key(mat: dict[str, Any], key: str, path: Path) -> Any:
    if key not in mat:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: expected key {key!r} is missing; keys present: {present}")
    return mat[key]


def _dense(a: Any) -> np.ndarray:
    if hasattr(a, "toarray"):
        a = a.toarray()
    return np.asarray(a)


def _per_view(value: Any, n: int, what: str, dataset: str) -> list[Any]:
    if isinstance(value, list):
        if len(value) != n:
            raise ValueError(f"{dataset}: {what} lists {len(value)} entries for {n} views")
        return value
    return [value] * n


def _read_mat_views(spec: dict[str, Any], path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    mat = _load_mat(path)
    if "view_keys" in spec:
        raws = [_dense(_mat_key(mat, k, path)) for k in spec["view_keys"]]
    else:
        cell = np.asarray(_mat_key(mat, spec["cell_key"], path)).ravel()
        raws = []
        for i in spec["cell_indices"]:
            if not 0 <= i < cell.size:
                raise ValueError(
                    f"{path}: cell {spec['cell_key']!r} has {cell.size} entries, index {i} asked"
                )
            raws.append(_dense(cell[i]))
    flips = _per_view(spec.get("transposed", False), len(raws), "transposed", spec["name"])
    views = [r.T if t else r for r, t in zip(raws, flips, strict=True)]
    labels = _dense(_mat_key(mat, spec["label_key"], path)).ravel()
    return views, labels


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped), e.g. Fashion-MNIST's, with numpy only."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        buf = f.read()
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = buf[3]
    shape = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(buf) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: idx header says {shape}, payload has {len(buf) - offset} bytes")
    return np.frombuffer(buf, dtype=np.uint8, offset=offset).reshape(shape)


def build_fashion3v(
    images: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    per_class: int = 1000,
    n_views: int = 3,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Build the 3-view Fashion set from raw images (our construction, deterministic).

    ``rng = np.random.default_rng(seed)``; for each class c in increasing order,
    ``pick = rng.choice(np.flatnonzero(labels == c), n_views * per_class, replace=False)``
    reshaped to ``(n_views, per_class)``: sample j of class c has the views
    ``images[pick[0, j]], ..., images[pick[n_views - 1, j]]``, so ``n_views`` different images
    of class c. Samples are in class-major order. Returns (views flattened, unscaled; labels
    0..K-1; source_index N x n_views into ``images``).
    """
    images = np.asarray(images)
    labels = np.asarray(labels).ravel()
    flat = images.reshape(len(images), -1)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picks = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool) < n_views * per_class:
            raise ValueError(f"class {c} has {len(pool)} images, {n_views * per_class} needed")
        picks.append(rng.choice(pool, n_views * per_class, replace=False).reshape(n_views, -1))
    source = np.concatenate(picks, axis=1).T.copy()  # N x n_views
    views = [np.ascontiguousarray(flat[source[:, v]]) for v in range(n_views)]
    y = np.repeat(np.arange(len(classes), dtype=np.int64), per_class)
    return views, y, source


def build_multicoil(
    images: np.ndarray,
    objects: np.ndarray,
    n_objects: int = 20,
    poses_per_object: int = 72,
    n_views: int = 3,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Build Multi-COIL from COIL-20 rows (our construction, no randomness).

    Objects are taken in increasing label order, the first ``n_objects``. The rows of an object,
    in file order (= pose order 0..71, 5 degrees apart), are split into ``n_views`` consecutive
    pose groups of ``g = poses_per_object // n_views``; sample j of the object has views
    ``pose j, g + j, 2g + j, ...``. N = n_objects * g, object-major. Returns (views, labels
    0..n_objects-1, source_index N x n_views into ``images``).
    """
    objects = np.asarray(objects).ravel()
    uniq = np.unique(objects)
    if len(uniq) < n_objects:
        raise ValueError(f"COIL file has {len(uniq)} objects, {n_objects} asked")
    g = poses_per_object // n_views
    rows = []
    for o in uniq[:n_objects]:
        r = np.flatnonzero(objects == o)
        if len(r) != poses_per_object:
            raise ValueError(f"object {o} has {len(r)} images, expected {poses_per_object}")
        rows.append(r[: g * n_views].reshape(n_views, g).T)  # g x n_views
    source = np.concatenate(rows, axis=0)
    views = [np.ascontiguousarray(np.asarray(images)[source[:, v]]) for v in range(n_views)]
    y = np.repeat(np.arange(n_objects, dtype=np.int64), g)
    return views, y, source


def _built_cache_path(kind: str, params: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "built" / f"{kind}_seed{params.get('seed', 'na')}_{key}.npz"


def _read_fashion3v(spec: dict[str, Any], paths: list[Path]) -> tuple[list, np.ndarray, dict]:
    by_name = {Path(e["name"]).name: p for e, p in zip(spec["files"], paths, strict=True)}
    params = {
        "construction": "fashion3v-v1",
        "seed": int(spec.get("seed", 0)),
        "per_class": int(spec.get("per_class", 1000)),
        "n_views": int(spec.get("n_views", 3)),
        "sources": sorted(_hash_file(p) for p in paths),
    }
    cpath = _built_cache_path("fashion3v", params)
    if cpath.is_file():
        try:
            with np.load(cpath) as z:
                if json.loads(str(z["params"])) == params:
                    views = [z[f"view{v}"] for v in range(params["n_views"])]
                    return views, z["labels"], {"source_index": z["source_index"]}
        except (OSError, ValueError, KeyError):
            pass
    images = np.concatenate(
        [
            read_idx(by_name["train-images-idx3-ubyte.gz"]),
            read_idx(by_name["t10k-images-idx3-ubyte.gz"]),
        ]
    )
    raw_labels = np.concatenate(
        [
            read_idx(by_name["train-labels-idx1-ubyte.gz"]),
            read_idx(by_name["t10k-labels-idx1-ubyte.gz"]),
        ]
    )
    if len(images) != len(raw_labels):
        raise ValueError(f"Fashion-MNIST: {len(images)} images but {len(raw_labels)} labels")
    views, labels, source = build_fashion3v(
        images, raw_labels, params["seed"], params["per_class"], params["n_views"]
    )
    try:
        cpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = cpath.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            params=json.dumps(params),
            labels=labels,
            source_index=source,
            **{f"view{v}": x for v, x in enumerate(views)},
        )
        os.replace(tmp, cpath)
    except OSError:
        pass  # read-only cache: just rebuild next time
    return views, labels, {"source_index": source}


def _read_multicoil(spec: dict[str, Any], paths: list[Path]) -> tuple[list, np.ndarray, dict]:
    path = paths[0]
    mat = _load_mat(path)
    images = _dense(_mat_key(mat, spec.get("image_key", "fea"), path))
    objects = _dense(_mat_key(mat, spec["label_key"], path)).ravel()
    if spec.get("transposed", False):
        images = images.T
    if len(images) != len(objects):
        raise ValueError(f"{path}: {len(images)} images but {len(objects)} labels")
    base = spec.get("label_base", "auto")
    if base != "auto" and objects.size and objects.min() != base:
        raise ValueError(f"{path}: smallest label is {objects.min()}, registry label_base = {base}")
    views, labels, source = build_multicoil(
        images,
        objects,
        int(spec["n_objects"]),
        int(spec.get("poses_per_object", 72)),
        int(spec.get("n_views", 3)),
    )
    return views, labels, {"source_index": source}


def _read_ccv_npy(spec: dict[str, Any], paths: list[Path]) -> tuple[list, np.ndarray, dict]:
    by_name = {e["name"]: p for e, p in zip(spec["files"], paths, strict=True)}
    views = [np.load(by_name[f], allow_pickle=False) for f in spec["view_files"]]
    labels = np.load(by_name[spec["label_file"]], allow_pickle=False).ravel()
    return views, labels, {}


def _read_generic(spec: dict[str, Any], paths: list[Path]) -> tuple[list, np.ndarray, dict]:
    views, labels = _read_mat_views(spec, paths[0])
    return views, labels, {}


def _generate_multiview_blobs(
    spec: dict[str, Any], paths: list[Path]
) -> tuple[list, np.ndarray, dict]:
    """``N`` samples of :func:`~cmmc.synthetic.make_multiview_blobs` from ``seed``: K clusters,
    one view per entry of ``dims``, each half signal and half distractor features."""
    dims = list(spec["dims"])
    if len(set(dims)) != 1 or dims[0] % 2:
        raise ValueError(f"{spec['name']}: dims must be one even width per view, got {dims}")
    views, labels = make_multiview_blobs(
        int(spec["N"]), int(spec["K"]), len(dims), dims[0] // 2, seed=int(spec["seed"])
    )
    return views, labels, {}


_BUILT = {"fashion3v", "multicoil"}
_GENERATORS = {"multiview_blobs"}
_READERS = {
    "mat": _read_generic,
    "fashion3v": _read_fashion3v,
    "multicoil": _read_multicoil,
    "ccv_official_npy": _read_ccv_npy,
    "multiview_blobs": _generate_multiview_blobs,
}


# --------------------------------------------------------------------------------------------
# Scaling, labels, validation
# --------------------------------------------------------------------------------------------
def _labels_to_index(raw: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    name, k = spec["name"], int(spec["K"])
    y = check_labels(np.asarray(raw).ravel(), name=f"{name}: labels")
    uniq = np.unique(y)
    if len(uniq) != k:
        raise ValueError(f"{name}: labels have {len(uniq)} distinct values, registry K = {k}")
    base = spec.get("label_base", "auto")
    if base != "auto" and uniq[0] != base:
        raise ValueError(f"{name}: smallest label is {uniq[0]}, registry label_base = {base}")
    return np.searchsorted(uniq, y).astype(np.int64)


def _finish(
    spec: dict[str, Any], raw_views: list[np.ndarray], raw_labels: np.ndarray, meta: dict
) -> Dataset:
    name = spec["name"]
    names = list(spec.get("view_names") or [f"view{i + 1}" for i in range(len(raw_views))])
    if len(names) != len(raw_views):
        raise ValueError(f"{name}: {len(raw_views)} views read, {len(names)} view_names")
    scalings = _per_view(spec.get("scaling", "none"), len(raw_views), "scaling", name)
    labels = _labels_to_index(raw_labels, spec)
    views = []
    for raw, vname, how in zip(raw_views, names, scalings, strict=True):
        x = np.asarray(raw)
        if x.ndim > 2:
            x = x.reshape(len(x), -1)
        if x.ndim != 2:
            raise ValueError(f"{name}: view {vname!r} has shape {x.shape}, 2-d expected")
        if x.shape[0] != len(labels):
            raise ValueError(
                f"{name}: view {vname!r} has {x.shape[0]} samples but there are "
                f"{len(labels)} labels (views: {[np.shape(v) for v in raw_views]})"
            )
        (x,) = check_views([x], min_views=1, dtype=np.float64, names=[vname], where=name)
        x = scale(x, how, f"{name} view {vname!r}")
        views.append(np.ascontiguousarray(x, dtype=np.float32))
    if "N" in spec and len(labels) != int(spec["N"]):
        raise ValueError(f"{name}: {len(labels)} samples read, registry N = {spec['N']}")
    dims = [v.shape[1] for v in views]
    if "dims" in spec and dims != list(spec["dims"]):
        raise ValueError(f"{name}: view dims {dims}, registry dims {list(spec['dims'])}")
    return Dataset(name, views, labels, int(spec["K"]), names, meta)


# --------------------------------------------------------------------------------------------
# Public loading
# --------------------------------------------------------------------------------------------
def load_from_spec(
    spec: dict[str, Any],
    data_dir: str | Path | None = None,
    views: Sequence[int | str] | None = None,
    download: bool = True,
    n_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a dataset described by a registry-style ``spec`` (see ``registry.toml``).

    ``n_samples``: a set read from files is cut to a subset of that many samples drawn with
    ``seed`` (never larger than the set); a ``generated`` set is drawn with that many samples
    (default: its ``N``) from ``seed``. Either way the samples then depend on the seed.
    """
    spec = dict(spec)
    spec.setdefault("name", spec.get("display_name", "dataset"))
    reader = _READERS.get(spec.get("reader", ""))
    if reader is None:
        raise ValueError(
            f"{spec['name']}: unknown reader {spec.get('reader')!r}; known: {', '.join(_READERS)}"
        )
    generated = bool(spec.get("generated", False))
    if generated != (spec["reader"] in _GENERATORS):
        raise ValueError(
            f"{spec['name']}: 'generated' must be true exactly for the generating readers "
            f"{sorted(_GENERATORS)}, got generated = {generated} with reader {spec['reader']!r}"
        )
    if generated:
        spec["N"] = int(n_samples if n_samples is not None else spec["N"])
        spec["seed"] = int(seed)
    paths = [
        fetch(
            e,
            download=download,
            data_dir=data_dir,
            dataset=spec["name"],
            how_to_get=spec.get("how_to_get"),
        )
        for e in spec["files"]
    ]
    raw_views, raw_labels, meta = reader(spec, paths)
    if spec["reader"] in _BUILT:  # builders return 0-based labels (they check the raw base)
        spec["label_base"] = 0
    ds = _finish(spec, raw_views, raw_labels, meta)
    if n_samples is not None and not generated:
        if n_samples > ds.n_samples:
            raise ValueError(
                f"n_samples={n_samples} is more than the {ds.n_samples} samples of "
                f"{spec['name']}: a subset cannot be larger than its set (use a generated set, "
                "such as 'synthetic')"
            )
        rng = np.random.default_rng(seed)
        ds = ds.subset(np.sort(rng.choice(ds.n_samples, n_samples, replace=False)))
    return ds.select_views(views) if views is not None else ds


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    views: Sequence[int | str] | None = None,
    download: bool = True,
    spec: dict[str, Any] | None = None,
    n_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load registry dataset ``name`` (or ``spec``, if given), optionally a subset of views.

    ``views`` picks views by index or name, in the given order (e.g. HW ``["pix", "fou"]``).
    ``n_samples`` and ``seed``: a seeded subset of a set read from files, or the size and seed
    of a generated set (:func:`load_from_spec`).
    """
    return load_from_spec(
        spec if spec is not None else get_spec(name), data_dir, views, download, n_samples, seed
    )


def dataset_status(data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Presence and checksum state of every registry dataset. Never downloads."""
    rows = []
    for name in list_datasets():
        spec = get_spec(name)
        paths: list[Path | None] = []
        verified: bool | None = True if spec["files"] else None  # a generated set: no file
        for e in spec["files"]:
            p = _locate(e, data_dir)
            paths.append(p)
            if p is None:
                continue
            try:
                v = _verify(p, e)
            except ValueError:
                v = False
            if v is None and verified is True:
                verified = None
            elif v is False:
                verified = False
        present = all(p is not None for p in paths)
        rows.append(
            {
                "name": name,
                "files": [e["name"] for e in spec["files"]],
                "present": present,
                "verified": verified if present else (False if verified is False else None),
                "path": str(paths[0]) if paths and paths[0] is not None else None,
                "paths": [str(p) if p is not None else None for p in paths],
                "N": spec.get("N"),
                "K": spec.get("K"),
                "dims": spec.get("dims"),
                "note": spec.get("note", ""),
            }
        )
    return rows


def copy_data_files(
    target: str | Path, names: Sequence[str] | None = None, data_dir: str | Path | None = None
) -> list[Path]:
    """Copy every verified file of the named datasets (default: all present) into ``target``,
    keeping the registry's relative names, so that ``CMMC_DATA_DIR=target`` finds them there
    (e.g. for a machine without network). A named dataset whose files are missing is an error
    (FileNotFoundError naming it and the folders searched); with ``names=None`` it is skipped."""
    import shutil

    target = Path(target)
    rows = dataset_status(data_dir)
    if names is not None:  # a data set asked for by name must be there: say where we looked
        unknown = set(names) - {r["name"] for r in rows}
        if unknown:
            raise ValueError(f"unknown datasets {sorted(unknown)}; known: {list_datasets()}")
        absent = [r["name"] for r in rows if r["name"] in names and not r["present"]]
        if absent:
            where = ", ".join(str(d) for d in data_dirs())
            raise FileNotFoundError(
                f"datasets {absent}: files not found in {where} (set CMMC_DATA_DIR)"
            )
    copied = []
    for row in rows:
        if (names is not None and row["name"] not in names) or not row["present"]:
            continue
        if row["verified"] is False:
            raise ValueError(f"dataset {row['name']}: a file fails its checksum: {row['paths']}")
        for rel, src in zip(row["files"], row["paths"], strict=True):
            dst = target / rel
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                copied.append(dst)
    return copied


# --------------------------------------------------------------------------------------------
# A user's own file
# --------------------------------------------------------------------------------------------
_NPZ_LABEL_KEYS = ("y", "Y", "labels", "label")
_MAT_LABEL_KEYS = ("Y", "y", "gt", "truth", "truelabel")


class _MissingFile(FileNotFoundError, ValueError):
    """A file that is not there: both a FileNotFoundError and a ValueError."""


def _natural_key(key: str) -> list[Any]:
    """``X2`` before ``X10``: digit runs compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key) if t]


def _is_numeric(a: Any) -> bool:
    return hasattr(a, "toarray") or np.asarray(a).dtype.kind in "biuf"


def _read_npz(path: Path) -> tuple[dict[str, Any], list[str] | None]:
    """The arrays of the file, and None: every array is a candidate view."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}, None


def _read_user_mat(path: Path) -> tuple[dict[str, Any], list[str] | None]:
    """The arrays of the file (a cell array ``X`` unpacked to ``X{1}``, ``X{2}``, ...), and the
    cell's entries as the candidate views (None without a cell: every array is a candidate)."""
    mat = {k: v for k, v in _load_mat(path).items() if not k.startswith("__")}
    cell = mat.get("X")
    if not (isinstance(cell, np.ndarray) and cell.dtype == object):
        return mat, None
    names = []
    for i, entry in enumerate(cell.ravel()):
        if not (isinstance(entry, np.ndarray) or hasattr(entry, "toarray")):
            raise ValueError(
                f"{path}: entry {i + 1} of the cell array 'X' is not an array (cell arrays of "
                "MATLAB v7.3 files are not read: save the views under their own keys X1, X2, ...)"
            )
        names.append(f"X{{{i + 1}}}")
        mat[names[-1]] = entry
    del mat["X"]
    return mat, names


def _orient(views: dict[str, np.ndarray], n: int | None) -> dict[str, np.ndarray]:
    """Transpose the 2-D views stored features x samples, judged from the sample count ``n``
    (the labels' count) or, without labels, from the size that every view has as its row or
    column count (the common row count when all views agree on it)."""
    shapes = [v.shape for v in views.values() if v.ndim == 2]
    if n is None and shapes:
        rows = {s[0] for s in shapes}
        common = set.intersection(*({s[0], s[1]} for s in shapes))
        n = rows.pop() if len(rows) == 1 else (common.pop() if len(common) == 1 else None)
    if n is None:
        return views
    return {
        k: v.T if v.ndim == 2 and v.shape[0] != n and v.shape[1] == n else v
        for k, v in views.items()
    }


def load_views_file(
    path: str | Path,
    *,
    scaling: str | Sequence[str] = "none",
    label_key: str | None = None,
    view_keys: Sequence[str] | None = None,
    transposed: bool | None = None,
) -> Dataset:
    """Read a user's multi-view data from a ``.npz`` or ``.mat`` file.

    ``.npz``: every array is a view (N x D_m) except the labels (``y``, ``Y``, ``labels`` or
    ``label``). ``.mat``: views under their own keys (``X1``, ``X2``, ...; v7.3 files too) or in
    a cell array ``X`` (1 x M or M x 1; not in v7.3 files); labels under ``Y``, ``y``, ``gt``,
    ``truth`` or ``truelabel``.
    Views are taken in natural key order (``X2`` before ``X10``; cell entries are named ``X{1}``,
    ``X{2}``, ...) unless ``view_keys`` picks and orders them; ``label_key`` names the labels.
    Arrays of 3 or more dimensions are flattened per sample (first axis = samples); a 1-D view is
    an error. Labels are optional; present, they are mapped through their sorted unique values to
    0..K-1. ``transposed``: None (default) transposes a ``.mat`` view stored features x samples,
    i.e. whose columns (not rows) match the label count (without labels: the other views'
    common sample count); True transposes every view, False none (``.npz``: None means False).
    ``scaling``: one rule or one per view, among none, div255, minmax, minmax_view, standardize.
    Problems (missing file or key, different sample counts, NaN/Inf, ...) raise ValueError
    naming the file and key. ``name`` is the file stem and ``view_names`` the keys.
    """
    path = Path(path).expanduser()
    readers = {".npz": _read_npz, ".mat": _read_user_mat}
    if path.suffix.lower() not in readers:
        raise ValueError(f"{path}: unknown extension {path.suffix!r}; expected .npz or .mat")
    if not path.is_file():
        raise _MissingFile(f"{path}: no such file")
    is_mat = path.suffix.lower() == ".mat"
    arrays, candidates = readers[path.suffix.lower()](path)
    present = sorted(arrays, key=_natural_key)
    if label_key is not None and label_key not in arrays:
        raise ValueError(f"{path}: label key {label_key!r} is not in the file; keys: {present}")
    if label_key is None:
        auto = _MAT_LABEL_KEYS if is_mat else _NPZ_LABEL_KEYS
        label_key = next((k for k in auto if k in arrays and k not in (view_keys or ())), None)
    if view_keys is None:
        keys = [k for k in (candidates or present) if k != label_key and _is_numeric(arrays[k])]
    else:
        keys = list(view_keys)
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ValueError(f"{path}: view keys {missing} are not in the file; keys: {present}")
    if not keys:
        raise ValueError(f"{path}: no views found; keys: {present}")
    raw: dict[str, np.ndarray] = {}
    for k in keys:
        if not _is_numeric(arrays[k]):
            raise ValueError(f"{path}: view {k!r} is not numeric ({np.asarray(arrays[k]).dtype})")
        x = _dense(arrays[k])
        if x.ndim < 2:
            raise ValueError(f"{path}: view {k!r} is {x.ndim}-D, shape {x.shape}; N x D expected")
        raw[k] = x.reshape(len(x), -1) if x.ndim > 2 else x
    y = None if label_key is None else _dense(arrays[label_key]).ravel()
    if transposed is True:
        raw = {k: v.T for k, v in raw.items()}
    elif transposed is None and is_mat:
        raw = _orient(raw, None if y is None else len(y))
    checked = check_views([raw[k] for k in keys], 1, np.float64, names=keys, where=str(path))
    n = checked[0].shape[0]
    if not isinstance(scaling, str):  # one rule for every view, or one per view
        scaling = scaling[0] if len(scaling) == 1 else list(scaling)
    scalings = _per_view(scaling, len(keys), "scaling", str(path))
    views = []
    for x, k, how in zip(checked, keys, scalings, strict=True):
        views.append(np.ascontiguousarray(scale(x, how, f"{path} view {k!r}"), dtype=np.float32))
    labels, k_classes = None, None
    if y is not None:
        if len(y) != n:
            raise ValueError(f"{path}: labels {label_key!r} have {len(y)} entries, views have {n}")
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            raise ValueError(f"{path}: labels {label_key!r} hold NaN/Inf values")
        uniq = np.unique(y)
        labels, k_classes = np.searchsorted(uniq, y).astype(np.int64), len(uniq)
    meta = {"path": str(path), "label_key": label_key}
    return Dataset(path.stem, views, labels, k_classes, keys, meta)

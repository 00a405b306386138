"""Tests of cmmc.data: real files (when present) against independent facts, and every layout on
tiny generated files, plus the error paths."""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from cmmc import data

REAL = Path(os.environ.get("CMMC_DATA_DIR") or Path(__file__).resolve().parents[1] / "data")

# Independent facts (the papers' data set descriptions and the files' own documentation): N, dims,
# K.
EXPECTED = {
    "MNIST-USPS": (5000, [784, 784], 10),
    "BDGP": (2500, [1750, 79], 5),
    "Fashion": (10000, [784, 784, 784], 10),
    "Hdigit": (10000, [784, 256], 10),
    "Prokaryotic": (551, [393, 3, 438], 4),
    "Synthetic3d": (600, [3, 3, 3], 3),
    "Scene-15": (4485, [20, 59, 40], 15),
    "LandUse-21": (2100, [20, 59, 40], 21),
    "HW": (2000, [216, 76, 64, 6, 240, 47], 10),
    "Reuters-1200": (1200, [2000] * 5, 6),
    "ALOI": (1079, [64, 64, 77, 13], 10),
    "Multi-COIL-20": (480, [1024] * 3, 20),
    "Multi-COIL-10": (240, [1024] * 3, 10),
    "CCV": (6773, [20, 20, 20], 20),
}
BALANCED = {
    "MNIST-USPS": 500,
    "BDGP": 500,
    "Fashion": 1000,
    "Hdigit": 1000,
    "Synthetic3d": 200,
    "LandUse-21": 100,
    "HW": 200,
    "Reuters-1200": 200,
    "Multi-COIL-20": 24,
    "Multi-COIL-10": 24,
}


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cmmc_cache")


@pytest.fixture(autouse=True)
def _env(monkeypatch, shared_cache):
    monkeypatch.setenv("CMMC_CACHE_DIR", str(shared_cache))
    monkeypatch.setenv("CMMC_DATA_DIR", str(REAL))


def _need(*files: str) -> None:
    for f in files:
        if not (REAL / f).is_file():
            pytest.skip(f"{f} not in {REAL}")


def _files_of(name: str) -> list[str]:
    return [e["name"] for e in data.get_spec(name)["files"]]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
def test_registry_matches_sources_tsv():
    tsv = REAL / "SOURCES.tsv"
    if not tsv.is_file():
        pytest.skip("no SOURCES.tsv")
    with open(tsv) as f:
        rows = {r["file"]: r for r in csv.DictReader(f, delimiter="\t")}
    seen = set()
    for name in data.list_datasets():
        for e in data.get_spec(name)["files"]:
            if e["name"] in rows:
                r = rows[e["name"]]
                seen.add(e["name"])
                assert e["sha256"] == r["sha256"], e["name"]
                assert e["size"] == int(r["size_bytes"]), e["name"]
                if r["source"].startswith("github:"):
                    repo = r["source"].removeprefix("github:")
                    url = f"https://raw.githubusercontent.com/{repo}/{r['commit']}/{r['path_in_source']}"
                    assert e["url"] == url
                    assert e["download_known_hash"] == "sha256:" + r["sha256"]
    assert seen == set(rows), set(rows) - seen


def test_registry_schema():
    names = data.list_datasets()
    for want in ["MNIST-USPS", "BDGP", "Fashion", "CCV", "CCV-paper", "Caltech-5V", "HW"]:
        assert want in names
    for name in names:
        s = data.get_spec(name)
        assert len(s["view_names"]) == len(s["dims"]), name
        readers = {"mat", "fashion3v", "multicoil", "ccv_official_npy", "multiview_blobs"}
        assert s["reader"] in readers, name
        assert bool(s.get("generated")) == (s["reader"] == "multiview_blobs") == (not s["files"])
        for key in ("N", "K", "contrastive_epochs", "note", "licence", "files"):
            assert key in s, (name, key)
    epochs = {n: data.get_spec(n)["contrastive_epochs"] for n in names}
    assert epochs["MNIST-USPS"] == 50 and epochs["BDGP"] == 10 and epochs["Fashion"] == 100
    assert epochs["CCV-paper"] == 50 and epochs["Caltech-2V"] == 50 and epochs["HW"] == 50
    assert "NOT the paper" in data.get_spec("CCV")["note"]
    assert data.get_spec("mnist_usps")["name"] == "MNIST-USPS"
    assert data.get_spec("hw")["view_names"] == ["fac", "fou", "kar", "mor", "pix", "zer"]
    assert "MIT" in data.get_spec("Fashion")["licence"]


def test_generated_set_is_the_generator_drawn_from_the_seed():
    from cmmc.synthetic import make_multiview_blobs

    spec = data.get_spec("synthetic")
    assert spec["generated"] and spec["files"] == []
    for n, seed in [(None, 0), (1500, 3)]:
        ds = data.load_dataset("synthetic", n_samples=n, seed=seed)
        views, labels = make_multiview_blobs(
            n or spec["N"], spec["K"], len(spec["dims"]), seed=seed
        )
        assert ds.n_samples == len(labels) and ds.dims == spec["dims"] == [20, 20]
        for a, b in zip(ds.views, views, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, labels)
    other = data.load_dataset("synthetic", seed=1)
    assert not np.array_equal(other.views[0], data.load_dataset("synthetic").views[0])
    status = {r["name"]: r for r in data.dataset_status()}["synthetic"]
    assert status["present"] and status["verified"] is None  # nothing to verify


def test_subset_is_seeded_and_never_larger_than_its_set():
    _need(*_files_of("Synthetic3d"))
    full = data.load_dataset("Synthetic3d", download=False)
    sub = data.load_dataset("Synthetic3d", download=False, n_samples=48, seed=5)
    idx = np.sort(np.random.default_rng(5).choice(full.n_samples, 48, replace=False))
    assert np.array_equal(sub.labels, full.labels[idx])
    for a, b in zip(sub.views, full.views, strict=True):
        assert np.array_equal(a, b[idx])
    with pytest.raises(ValueError, match="601 is more than the 600 samples of Synthetic3d"):
        data.load_dataset("Synthetic3d", download=False, n_samples=601)


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*MNIST-USPS.*BDGP"):
        data.get_spec("nope")
    with pytest.raises(ValueError, match="known datasets"):
        data.load_dataset("nope")


def test_data_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("CMMC_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("CMMC_CACHE_DIR", str(tmp_path / "c"))
    repo_data = Path(data.__file__).resolve().parent.parent / "data"  # the checkout's data/
    assert data.data_dirs() == [tmp_path / "d", repo_data, tmp_path / "c"]
    monkeypatch.delenv("CMMC_DATA_DIR")
    monkeypatch.delenv("CMMC_CACHE_DIR")
    assert data.data_dirs() == [repo_data, Path.home() / ".cache" / "cmmc"]


# --------------------------------------------------------------------------------------------
# Real files
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_dataset(name):
    _need(*_files_of(name))
    n, dims, k = EXPECTED[name]
    ds = data.load_dataset(name, download=False)
    assert ds.n_samples == n and ds.dims == dims and ds.n_clusters == k
    assert ds.n_views == len(dims) == len(ds.view_names)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (n,)
    assert ds.labels.min() == 0 and ds.labels.max() == k - 1
    assert len(np.unique(ds.labels)) == k
    for v in ds.views:
        assert v.dtype == np.float32 and v.flags.c_contiguous and v.shape[0] == n
        assert np.isfinite(v).all()
    if name in BALANCED:
        assert (np.bincount(ds.labels, minlength=k) == BALANCED[name]).all()
    spec = data.get_spec(name)
    scal = spec["scaling"] if isinstance(spec["scaling"], list) else [spec["scaling"]] * ds.n_views
    for v, s in zip(ds.views, scal, strict=True):
        if s in ("minmax", "div255"):
            assert v.min() >= 0 and v.max() <= 1
        if s == "minmax":  # every non-constant column spans exactly [0, 1]
            span = v.max(0) - v.min(0)
            assert np.allclose(span[span > 0], 1, atol=1e-6)


def test_mnist_usps_equals_raw_file():
    _need("MNIST_USPS.mat")
    raw = scipy.io.loadmat(REAL / "MNIST_USPS.mat")
    ds = data.load_dataset("MNIST-USPS")
    np.testing.assert_array_equal(ds.views[0], raw["X1"].astype(np.float32))
    np.testing.assert_array_equal(ds.views[1], raw["X2"].astype(np.float32))
    np.testing.assert_array_equal(ds.labels, raw["Y"].ravel())


def test_bdgp_transposed_and_base1():
    _need("BDGP.mat")
    raw = scipy.io.loadmat(REAL / "BDGP.mat")
    ds = data.load_dataset("BDGP")
    np.testing.assert_array_equal(ds.views[0], raw["data"][0, 0].T.astype(np.float32))
    np.testing.assert_array_equal(ds.views[1], raw["data"][0, 1].T.astype(np.float32))
    np.testing.assert_array_equal(ds.labels, raw["truth"].ravel().astype(int) - 1)
    assert set(np.unique(ds.views[1])) <= {0.0, 1.0}


def test_hw_view_selection_by_name():
    _need("HW.mat")
    ds = data.load_dataset("HW", views=["pix", "fou"])
    assert ds.view_names == ["pix", "fou"] and ds.dims == [240, 76]
    ds2 = data.load_dataset("HW", views=[4, 1])
    for a, b in zip(ds.views, ds2.views, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"'pixels'.*fac.*zer"):
        data.load_dataset("HW", views=["pixels"])
    with pytest.raises(ValueError, match="index 6"):
        data.load_dataset("HW", views=[6])


def test_aloi_huge_view_scaled():
    _need("ALOI.mat")
    raw = scipy.io.loadmat(REAL / "ALOI.mat")["X"][0, 3]
    assert np.abs(raw).max() > 1e12  # the reason for per-feature min-max
    ds = data.load_dataset("ALOI")
    v = ds.views[3]
    assert v.min() == 0 and v.max() == 1
    assert (v.std(0) > 1e-3).all()  # no column squashed to a constant


def _raw_fashion():
    def idx(f, off):
        with gzip.open(REAL / "fashion-mnist" / f) as fh:
            return np.frombuffer(fh.read(), np.uint8, offset=off)

    imgs = np.concatenate(
        [idx("train-images-idx3-ubyte.gz", 16), idx("t10k-images-idx3-ubyte.gz", 16)]
    ).reshape(-1, 784)
    labs = np.concatenate(
        [idx("train-labels-idx1-ubyte.gz", 8), idx("t10k-labels-idx1-ubyte.gz", 8)]
    )
    return imgs, labs


def test_fashion_construction_against_raw():
    _need(*_files_of("Fashion"))
    imgs, labs = _raw_fashion()
    assert imgs.shape == (70000, 784) and labs.shape == (70000,)
    ds = data.load_dataset("Fashion")
    src = ds.meta["source_index"]
    assert src.shape == (10000, 3)
    assert len(np.unique(src)) == 30000  # 3 different images per sample, none reused
    for m in range(3):
        assert (labs[src[:, m]] == ds.labels).all()
        np.testing.assert_array_equal(ds.views[m], imgs[src[:, m]].astype(np.float32) / 255)
    # independent of source_index: every view image is a raw image of the sample's class
    classes_of: dict[bytes, set[int]] = {}
    for im, lab in zip(imgs, labs, strict=True):
        classes_of.setdefault(im.tobytes(), set()).add(int(lab))
    for m in range(3):
        pix = np.rint(ds.views[m] * 255).astype(np.uint8)
        for row, lab in zip(pix, ds.labels, strict=True):
            assert int(lab) in classes_of[row.tobytes()]
    # cached arrays are identical to a fresh build, and loading again is fast
    t = time.perf_counter()
    again = data.load_dataset("Fashion")
    assert time.perf_counter() - t < 5
    for a, b in zip(ds.views, again.views, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fashion_builder_deterministic():
    _need(*_files_of("Fashion"))
    imgs, labs = _raw_fashion()
    a = data.build_fashion3v(imgs, labs, seed=0)
    b = data.build_fashion3v(imgs, labs, seed=0)
    c = data.build_fashion3v(imgs, labs, seed=1)
    np.testing.assert_array_equal(a[2], b[2])
    for x, y in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])


def test_multicoil_construction():
    _need("COIL20.mat")
    raw = scipy.io.loadmat(REAL / "COIL20.mat")
    fea, gnd = raw["fea"], raw["gnd"].ravel()
    for name, k in (("Multi-COIL-20", 20), ("Multi-COIL-10", 10)):
        ds = data.load_dataset(name)
        src = ds.meta["source_index"]
        assert len(np.unique(src)) == 72 * k
        for m in range(3):
            np.testing.assert_array_equal(ds.views[m], fea[src[:, m]].astype(np.float32))
            assert (gnd[src[:, m]] - 1 == ds.labels).all()
        # views are pose groups 24 apart within an object's consecutive rows
        assert (np.diff(src, axis=1) == 24).all()


def test_builders_on_tiny_arrays():
    labels = np.repeat(np.arange(3), 10)
    imgs = np.arange(30 * 4, dtype=np.uint8).reshape(30, 2, 2)
    views, y, src = data.build_fashion3v(imgs, labels, seed=5, per_class=3, n_views=3)
    assert [v.shape for v in views] == [(9, 4)] * 3 and (np.bincount(y) == 3).all()
    assert len(np.unique(src)) == 27 and (labels[src] == y[:, None]).all()
    with pytest.raises(ValueError, match="needed"):
        data.build_fashion3v(imgs, labels, per_class=4, n_views=3)
    objs = np.repeat([1, 2], 6)
    views, y, src = data.build_multicoil(np.eye(12), objs, 2, 6, 3)
    assert src.tolist() == [[0, 2, 4], [1, 3, 5], [6, 8, 10], [7, 9, 11]]
    assert y.tolist() == [0, 0, 1, 1]


def test_dataset_status_no_download(monkeypatch):
    import pooch

    def boom(*a, **k):
        raise AssertionError("dataset_status must not download")

    monkeypatch.setattr(pooch, "retrieve", boom)
    rows = {r["name"]: r for r in data.dataset_status()}
    assert set(rows) == set(data.list_datasets())
    assert rows["Caltech-3V"]["present"] is False and rows["Caltech-3V"]["verified"] is None
    assert rows["Caltech-3V"]["path"] is None and rows["Caltech-3V"]["dims"] == [40, 254, 928]
    if (REAL / "MNIST_USPS.mat").is_file():
        assert rows["MNIST-USPS"]["present"] and rows["MNIST-USPS"]["verified"] is True
        assert rows["MNIST-USPS"]["N"] == 5000


# --------------------------------------------------------------------------------------------
# Generated files: every layout
# --------------------------------------------------------------------------------------------
def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _spec(tmp_path, fname, **kw):
    s = {
        "name": "Tiny",
        "reader": "mat",
        "K": 3,
        "label_key": "gt",
        "label_base": 1,
        "scaling": "none",
        "files": [{"name": fname, "sha256": _sha(tmp_path / fname), "url": ""}],
    }
    s.update(kw)
    return s


@pytest.fixture
def iso(monkeypatch, tmp_path):
    """Empty data and cache dirs: nothing real can be found."""
    monkeypatch.setenv("CMMC_DATA_DIR", str(tmp_path / "nodata"))
    monkeypatch.setenv("CMMC_CACHE_DIR", str(tmp_path / "nocache"))
    return tmp_path


def test_generic_mat_transposed_base1(iso):
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 12)), rng.random((7, 12)) * 100  # features x samples
    y = np.tile([1, 2, 3], 4)
    scipy.io.savemat(iso / "t.mat", {"A": a, "B": b, "gt": y[None, :]})
    spec = _spec(
        iso, "t.mat", view_keys=["A", "B"], transposed=True, scaling=["none", "minmax"], N=12
    )
    ds = data.load_dataset("ignored", data_dir=iso, spec=spec)
    assert ds.dims == [5, 7] and ds.n_samples == 12
    np.testing.assert_allclose(ds.views[0], a.T.astype(np.float32))
    bt = b.T
    np.testing.assert_allclose(
        ds.views[1], (bt - bt.min(0)) / (bt.max(0) - bt.min(0)), rtol=1e-6, atol=1e-6
    )
    assert ds.labels.tolist() == (y - 1).tolist() and ds.labels.dtype == np.int64
    assert ds.view_names == ["view1", "view2"]
    sub = ds.subset([0, 3]).select_views(["view2"])
    assert sub.n_samples == 2 and sub.dims == [7] and sub.labels.tolist() == [0, 0]
    # labels starting at 0 while the spec says 1: refused
    with pytest.raises(ValueError, match="label_base"):
        scipy.io.savemat(iso / "u.mat", {"A": a, "B": b, "gt": y[None, :] - 1})
        data.load_from_spec(_spec(iso, "u.mat", view_keys=["A", "B"], transposed=True), iso)


def test_cell_layout_and_noncontiguous_labels(iso):
    rng = np.random.default_rng(1)
    cell = np.empty((1, 3), dtype=object)
    cell[0, 0], cell[0, 1], cell[0, 2] = rng.random((9, 2)), rng.random((9, 4)), np.ones((9, 1))
    y = np.array([10, 20, 30] * 3)
    scipy.io.savemat(iso / "c.mat", {"X": cell, "gt": y[:, None]})
    spec = _spec(iso, "c.mat", cell_key="X", cell_indices=[1, 0], label_base="auto")
    ds = data.load_from_spec(spec, iso, views=[1])
    assert ds.dims == [2]
    np.testing.assert_allclose(ds.views[0], cell[0, 0].astype(np.float32))
    assert ds.labels.tolist() == [0, 1, 2] * 3
    spec["K"] = 4
    with pytest.raises(ValueError, match="3 distinct values, registry K = 4"):
        data.load_from_spec(spec, iso)
    spec.update(K=3, cell_indices=[0, 5])
    with pytest.raises(ValueError, match="index 5"):
        data.load_from_spec(spec, iso)


def test_ccv_official_npy_layout(iso):
    rng = np.random.default_rng(2)
    d = iso / "CCV"
    d.mkdir()
    stip, sift, mfcc = rng.random((8, 5)) * 50, rng.random((8, 5)) * 3, rng.random((8, 4)) - 2
    np.save(d / "STIP.npy", stip)
    np.save(d / "SIFT.npy", sift)
    np.save(d / "MFCC.npy", mfcc)
    np.save(d / "label.npy", np.arange(8) % 4)
    spec = data.get_spec("CCV-paper")
    spec.update(N=8, K=4, dims=[5, 5, 4])
    ds = data.load_dataset("CCV-paper", data_dir=iso, spec=spec)
    assert ds.view_names == ["stip", "sift", "mfcc"]
    mm = (stip - stip.min(0)) / (stip.max(0) - stip.min(0))
    np.testing.assert_allclose(ds.views[0], mm, rtol=1e-6, atol=1e-6)  # min-max: STIP only
    np.testing.assert_allclose(ds.views[1], sift.astype(np.float32))
    np.testing.assert_allclose(ds.views[2], mfcc.astype(np.float32))
    assert ds.labels.tolist() == (np.arange(8) % 4).tolist()
    # without the files: clear error naming the dataset and the places looked
    with pytest.raises(FileNotFoundError, match=r"CCV-paper.*STIP\.npy.*nodata.*Baidu"):
        data.load_dataset("CCV-paper")


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_caltech_layout(iso, m):
    rng = np.random.default_rng(3)
    n = 14
    # official key -> feature (tiny stand-in dims): X1 WM, X2 CENTRIST, X3 HOG, X4 GIST, X5 LBP
    dims = {"X1": 2, "X2": 3, "X3": 6, "X4": 5, "X5": 4}
    raw = {k: rng.random((n, d)) * (i + 1) * 10 for i, (k, d) in enumerate(dims.items())}
    y = np.tile(np.arange(1, 8), 2)
    scipy.io.savemat(iso / "Caltech-5V.mat", {**raw, "Y": y[None, :]})
    spec = data.get_spec(f"Caltech-{m}V")
    paper_order = ["X1", "X2", "X5", "X4", "X3"][:m]  # WM, CENTRIST, LBP, GIST, HOG
    spec.update(N=n, dims=[dims[k] for k in paper_order])
    ds = data.load_dataset(f"caltech-{m}v", data_dir=iso, spec=spec)
    assert ds.view_names == ["wm", "centrist", "lbp", "gist", "hog"][:m]
    for v, k in zip(ds.views, paper_order, strict=True):
        r = raw[k]
        np.testing.assert_allclose(v, (r - r.min(0)) / (r.max(0) - r.min(0)), atol=1e-6)
        assert v.min() == 0 and v.max() == 1
    assert ds.labels.tolist() == (y - 1).tolist() and ds.n_clusters == 7


def test_caltech_missing_file(iso):
    with pytest.raises(FileNotFoundError) as e:
        data.load_dataset("Caltech-3V")
    msg = str(e.value)
    assert "Caltech-3V" in msg and "Caltech-5V.mat" in msg
    assert str(iso / "nodata") in msg and str(iso / "nocache") in msg
    assert "CMMC_DATA_DIR" in msg


# --------------------------------------------------------------------------------------------
# Error paths
# --------------------------------------------------------------------------------------------
def test_checksum_mismatch_names_file(iso):
    scipy.io.savemat(iso / "t.mat", {"A": np.ones((3, 2)), "gt": np.array([1, 2, 3])})
    spec = _spec(iso, "t.mat", view_keys=["A"])
    actual = spec["files"][0]["sha256"]
    spec["files"][0]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match=rf"t\.mat.*expected sha256 0{{64}}, actual {actual}"):
        data.load_from_spec(spec, iso)


def test_hash_cache_sees_changes(iso):
    p = iso / "t.mat"
    scipy.io.savemat(p, {"A": np.ones((3, 2)), "gt": np.array([1, 2, 3])})
    spec = _spec(iso, "t.mat", view_keys=["A"])
    data.load_from_spec(spec, iso)
    data.load_from_spec(spec, iso)  # second time from the in-process hash cache
    scipy.io.savemat(p, {"A": np.zeros((3, 2)), "gt": np.array([1, 2, 3])})
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="checksum mismatch"):
        data.load_from_spec(spec, iso)


def test_missing_key_names_key_and_file(iso):
    scipy.io.savemat(iso / "t.mat", {"A": np.ones((3, 2)), "Y": np.array([1, 2, 3])})
    with pytest.raises(ValueError, match=r"t\.mat.*'gt'.*\['A', 'Y'\]"):
        data.load_from_spec(_spec(iso, "t.mat", view_keys=["A"]), iso)
    with pytest.raises(ValueError, match=r"'B'"):
        data.load_from_spec(_spec(iso, "t.mat", view_keys=["A", "B"], label_key="Y"), iso)


def test_missing_file_without_source(iso):
    spec = {
        "name": "Ghost",
        "reader": "mat",
        "K": 2,
        "files": [{"name": "ghost.mat", "sha256": "", "url": ""}],
    }
    with pytest.raises(FileNotFoundError) as e:
        data.load_from_spec(spec, iso / "here")
    msg = str(e.value)
    for part in ("Ghost", "ghost.mat", str(iso / "here"), str(iso / "nodata"), "CMMC_DATA_DIR"):
        assert part in msg


def test_failed_download_is_file_not_found(iso):
    entry = {"name": "x.mat", "sha256": "1" * 64, "url": "http://127.0.0.1:9/x.mat"}
    entry["download_known_hash"] = "sha256:" + "1" * 64
    with pytest.raises(FileNotFoundError, match=r"dataset D.*x\.mat.*failed"):
        data.fetch(entry, dataset="D")
    with pytest.raises(FileNotFoundError, match="download=False"):
        data.fetch(entry, download=False, dataset="D")


def test_nan_view_named(iso):
    a = np.ones((3, 2))
    b = np.ones((3, 2))
    b[1, 1] = np.nan
    scipy.io.savemat(iso / "t.mat", {"A": a, "B": b, "gt": np.array([1, 2, 3])})
    spec = _spec(iso, "t.mat", view_keys=["A", "B"], view_names=["good", "bad"])
    with pytest.raises(ValueError, match="view 'bad' holds 1 NaN/Inf"):
        data.load_from_spec(spec, iso)


def test_view_n_mismatch(iso):
    scipy.io.savemat(
        iso / "t.mat", {"A": np.ones((3, 2)), "B": np.ones((4, 2)), "gt": np.array([1, 2, 3])}
    )
    with pytest.raises(ValueError, match="view 'view2' has 4 samples but there are 3 labels"):
        data.load_from_spec(_spec(iso, "t.mat", view_keys=["A", "B"]), iso)


def test_registry_n_and_dims_enforced(iso):
    scipy.io.savemat(iso / "t.mat", {"A": np.ones((3, 2)), "gt": np.array([1, 2, 3])})
    with pytest.raises(ValueError, match="registry N = 4"):
        data.load_from_spec(_spec(iso, "t.mat", view_keys=["A"], N=4), iso)
    with pytest.raises(ValueError, match=r"registry dims \[5\]"):
        data.load_from_spec(_spec(iso, "t.mat", view_keys=["A"], dims=[5]), iso)
    with pytest.raises(ValueError, match="unknown scaling"):
        data.load_from_spec(_spec(iso, "t.mat", view_keys=["A"], scaling="log"), iso)


def test_copy_data_files_gives_a_findable_verified_copy(monkeypatch, tmp_path):
    _need("synthetic3d.mat", *_files_of("Fashion"))
    copied = data.copy_data_files(tmp_path / "copy", names=["Synthetic3d", "Fashion"])
    # Every file of each entry, under the registry's relative name (Fashion: all four .gz).
    expected = {"synthetic3d.mat", *_files_of("Fashion")}
    assert {str(p.relative_to(tmp_path / "copy")) for p in copied} == expected
    for rel in expected:
        assert _sha(tmp_path / "copy" / rel) == _sha(REAL / rel)
    monkeypatch.setenv("CMMC_DATA_DIR", str(tmp_path / "copy"))
    monkeypatch.setattr(data, "data_dirs", lambda: [tmp_path / "copy"])
    status = {r["name"]: r for r in data.dataset_status()}
    assert status["Synthetic3d"]["present"] and status["Synthetic3d"]["verified"] is True
    assert status["Synthetic3d"]["path"] == str(tmp_path / "copy" / "synthetic3d.mat")


def test_copy_data_files_names_a_missing_dataset(iso):
    with pytest.raises(FileNotFoundError, match=r"datasets \['BDGP'\].*nodata"):
        data.copy_data_files(iso / "copy", names=["BDGP"])
    with pytest.raises(ValueError, match="unknown datasets"):
        data.copy_data_files(iso / "copy", names=["BDPG"])


# --------------------------------------------------------------------------------------------
# A user's own file (load_views_file)
# --------------------------------------------------------------------------------------------
def test_user_npz_natural_order_scaling_and_labels(tmp_path):
    rng = np.random.default_rng(4)
    x1, x2, x10 = rng.random((6, 3)) * 9, rng.random((6, 2)) - 5, rng.random((6, 4))
    y = np.array([9, 3, 7, 7, 3, 9])
    np.savez(tmp_path / "mine.npz", X10=x10, X2=x2, X1=x1, labels=y)
    ds = data.load_views_file(tmp_path / "mine.npz", scaling=["minmax", "none", "standardize"])
    assert ds.name == "mine" and ds.view_names == ["X1", "X2", "X10"]
    assert ds.dims == [3, 2, 4] and ds.n_samples == 6 and ds.n_clusters == 3
    np.testing.assert_allclose(ds.views[0], (x1 - x1.min(0)) / (x1.max(0) - x1.min(0)), atol=1e-6)
    np.testing.assert_allclose(ds.views[1], x2.astype(np.float32))
    np.testing.assert_allclose(ds.views[2], (x10 - x10.mean(0)) / x10.std(0), atol=1e-5)
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in ds.views)
    assert ds.labels.tolist() == [2, 0, 1, 1, 0, 2] and ds.labels.dtype == np.int64  # 3, 7, 9
    # one rule for every view; view_keys picks and orders; another label key
    np.savez(tmp_path / "b.npz", view1=x1, view0=x2, grp=y)
    ds = data.load_views_file(tmp_path / "b.npz", scaling="div255", label_key="grp")
    assert ds.view_names == ["view0", "view1"] and ds.labels.tolist() == [2, 0, 1, 1, 0, 2]
    np.testing.assert_allclose(ds.views[1], x1 / 255.0, rtol=1e-6)
    ds = data.load_views_file(tmp_path / "b.npz", view_keys=["view1"])
    assert ds.view_names == ["view1"] and ds.labels is None  # "grp" is no known label key


def test_user_npz_unlabelled_and_flattened(tmp_path):
    imgs = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    np.savez(tmp_path / "u.npz", img=imgs, f=np.ones((5, 2)))
    ds = data.load_views_file(tmp_path / "u.npz")
    assert ds.labels is None and ds.n_clusters is None and ds.n_samples == 5
    assert ds.view_names == ["f", "img"] and ds.dims == [2, 6]
    np.testing.assert_array_equal(ds.views[1], imgs.reshape(5, 6))
    assert ds.subset([0, 4]).n_samples == 2 and ds.subset([0, 4]).labels is None


def test_user_mat_view_keys_transposed_and_cell(tmp_path):
    rng = np.random.default_rng(5)
    a, b = rng.random((4, 8)), rng.random((8, 3))  # a stored features x samples, b samples x D
    y = np.array([1, 1, 2, 2, 5, 5, 1, 2])
    scipy.io.savemat(tmp_path / "k.mat", {"X1": a, "X2": b, "gt": y[None, :]})
    ds = data.load_views_file(tmp_path / "k.mat", scaling="minmax_view")
    assert ds.view_names == ["X1", "X2"] and ds.dims == [4, 3]
    np.testing.assert_allclose(ds.views[0], (a.T - a.min()) / (a.max() - a.min()), atol=1e-6)
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 1]
    for shape in [(1, 2), (2, 1)]:  # cell array X, 1 x M or M x 1; no labels
        cell = np.empty(shape, dtype=object)
        cell.flat[0], cell.flat[1] = a, b  # the other view's 8 samples say: transpose a
        scipy.io.savemat(tmp_path / "c.mat", {"X": cell})
        ds = data.load_views_file(tmp_path / "c.mat")
        assert ds.view_names == ["X{1}", "X{2}"] and ds.labels is None
        np.testing.assert_allclose(ds.views[0], a.T.astype(np.float32))
        np.testing.assert_allclose(ds.views[1], b.astype(np.float32))
    ds = data.load_views_file(tmp_path / "c.mat", view_keys=["X{2}"], transposed=True)
    np.testing.assert_allclose(ds.views[0], b.T.astype(np.float32))


def test_user_file_errors_name_file_and_key(tmp_path):
    def load(name, arrays, **kw):
        p = tmp_path / name
        if name.endswith(".npz"):
            np.savez(p, **arrays)
        else:
            scipy.io.savemat(p, arrays)
        return data.load_views_file(p, **kw)

    with pytest.raises(ValueError, match=r"nothere\.npz: no such file"):
        data.load_views_file(tmp_path / "nothere.npz")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError
        data.load_views_file(tmp_path / "nothere.mat")
    with pytest.raises(ValueError, match=r"v\.csv: unknown extension '\.csv'"):
        data.load_views_file(tmp_path / "v.csv")
    with pytest.raises(ValueError, match=r"e\.npz: no views found; keys: \['y'\]"):
        load("e.npz", {"y": np.arange(3)})
    with pytest.raises(ValueError, match=r"n\.npz: view 'B' has 4 samples, view 'A' has 3"):
        load("n.npz", {"A": np.ones((3, 2)), "B": np.ones((4, 2))})
    with pytest.raises(ValueError, match=r"n\.mat: view 'X2' has 4 samples, view 'X1' has 3"):
        load("n.mat", {"X1": np.ones((3, 2)), "X2": np.ones((4, 5)), "Y": np.arange(3)})
    bad = np.ones((5, 2))
    bad[0, 0], bad[3, 1] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"f\.npz: view 'B' holds 2 NaN/Inf values"):
        load("f.npz", {"A": np.ones((5, 2)), "B": bad})
    with pytest.raises(ValueError, match=r"l\.npz: labels 'y' have 4 entries, views have 5"):
        load("l.npz", {"A": np.ones((5, 2)), "y": np.arange(4)})
    with pytest.raises(ValueError, match=r"k\.npz: view keys \['C'\] .*keys: \['A', 'B'\]"):
        load("k.npz", {"A": np.ones((5, 2)), "B": np.ones((5, 2))}, view_keys=["B", "C"])
    with pytest.raises(ValueError, match=r"k\.npz: label key 'lab' .*keys: \['A', 'B'\]"):
        load("k.npz", {"A": np.ones((5, 2)), "B": np.ones((5, 2))}, label_key="lab")
    with pytest.raises(ValueError, match=r"o\.npz: view 'B' is 1-D"):
        load("o.npz", {"A": np.ones((5, 2)), "B": np.ones(5)})
    with pytest.raises(ValueError, match=r"s\.npz.*scaling lists 3 entries for 2 views"):
        load("s.npz", {"A": np.ones((5, 2)), "B": np.ones((5, 2))}, scaling=["none"] * 3)
    with pytest.raises(ValueError, match=r"s\.npz view 'A': unknown scaling 'log'"):
        load("s.npz", {"A": np.ones((5, 2)), "B": np.ones((5, 2))}, scaling="log")


def test_image_layouts_of_the_registry_fit_the_views():
    from cmmc.book.pages import image_layout

    drawn = {n for n in data.list_datasets() if image_layout(n) is not None}
    assert {"MNIST-USPS", "Fashion", "Multi-COIL-20", "Multi-COIL-10"} <= drawn
    for name in drawn:
        spec = data.get_spec(name)
        layout = image_layout(name)
        assert len(layout) == len(spec["dims"]), name
        for (h, w, _), d in zip(layout, spec["dims"], strict=True):
            assert h * w == d, (name, h, w, d)  # one pixel per feature
    assert image_layout("HW") is None
    assert image_layout("MNIST-USPS")[0][2] and not image_layout("Fashion")[0][2]

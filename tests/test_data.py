import dataclasses
import hashlib
import re
import json
import multiprocessing as mp
import os
import pickle
import pickletools
import struct
import types
from pathlib import Path

import pytest
import numpy as np
import torch

import workbench as wb
from workbench import data as wb_data
from helpers import CIFAR_NAMES, py2_pickle, write_cifar, write_gtsrb, write_idx


def _check(ds, name, shape, n_classes):
    assert ds.name == name
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert tuple(ds.x_train.shape[1:]) == shape and tuple(ds.x_test.shape[1:]) == shape
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    assert ds.num_classes == n_classes
    assert wb_data.DATASET_SHAPES[name] == (shape, n_classes)  # the table grids check against


def test_digits_embedded(digits):
    _check(digits, "digits", (1, 16, 16), 10)
    assert len(digits.y_train) + len(digits.y_test) == 1797
    # stratified split: every class in both splits; deterministic across loads
    assert set(digits.y_test.tolist()) == set(range(10))
    again = wb.load_dataset("digits")
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_train, digits.y_train)
    assert "digits" in repr(digits)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match=r"`name` must be one of 'digits'.*got 'imagenet'"):
        wb.load_dataset("imagenet")


def test_max_train_and_test(digits):
    small = wb.load_dataset("digits", max_train=50, max_test=20)
    assert len(small.y_train) == 50 and len(small.y_test) == 20
    with pytest.raises(ValueError, match="`max_train`"):
        wb.load_dataset("digits", max_train=0)


def test_mnist_from_idx_files(tmp_path):
    write_idx(tmp_path, "MNIST", n_train=30, n_test=12)
    ds = wb.load_dataset("mnist", root=tmp_path, download=False)
    _check(ds, "mnist", (1, 28, 28), 10)
    assert len(ds.y_train) == 30 and ds.y_test.tolist() == [i % 10 for i in range(12)]


def test_fashion_mnist_from_idx_files(tmp_path):
    write_idx(tmp_path, "FashionMNIST", n_train=20, n_test=10, seed=3)
    ds = wb.load_dataset("fashion-mnist", root=tmp_path, download=False)
    _check(ds, "fashion-mnist", (1, 28, 28), 10)
    assert ds.classes[0] == "T-shirt/top"


def test_cifar10_from_pickle_batches(tmp_path):
    write_cifar(tmp_path, n_per_batch=6)  # laid out as the official files, random images
    ds = wb.load_dataset("cifar10", root=tmp_path, download=False, verify_checksums=False)
    _check(ds, "cifar10", (3, 32, 32), 10)
    assert len(ds.y_train) == 30 and len(ds.y_test) == 6 and ds.classes[1] == "automobile"
    assert ds.info["checksums_verified"] is False


def test_gtsrb_from_folders(tmp_path):
    write_gtsrb(tmp_path, classes=(0, 1, 2), per_class=3, n_test=4)
    ds = wb.load_dataset("gtsrb", root=tmp_path, download=False)
    _check(ds, "gtsrb", (3, 32, 32), 43)  # resized to 32x32 whatever the file size
    assert sorted(set(ds.y_train.tolist())) == [0, 1, 2] and len(ds.y_test) == 4


@pytest.mark.parametrize("name", ["mnist", "cifar10", "gtsrb"])
def test_missing_offline_dataset_says_how_to_get_it(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="download=True"):
        wb.load_dataset(name, root=tmp_path, download=False)


def _unpack_at_once(debian: Path, root: Path, barrier) -> None:
    wb_data.DEBIAN_FASHION_MNIST = debian
    barrier.wait()
    wb_data._unpack_debian_fashion_mnist(root)


def test_debian_fashion_mnist_unpacks_safely_from_many_processes(tmp_path):
    # A sweep's worker processes all load fashion-mnist on first use: each must unpack Debian's
    # .gz files without tripping over the others' half-written files.
    debian = tmp_path / "debian"
    write_idx(debian, "", n_train=3000, n_test=500, seed=5, gz=True)
    gz_dir = debian / "raw"
    root = tmp_path / "data"
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_unpack_at_once, args=(gz_dir, root, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    raw = root / "FashionMNIST" / "raw"
    assert sorted(f.name for f in raw.iterdir()) == sorted(f.name[:-3] for f in gz_dir.iterdir())
    ds = wb.load_dataset("fashion-mnist", root=root, download=False)
    assert len(ds.y_train) == 3000 and len(ds.y_test) == 500


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install "
                           "dataset-fashion-mnist); .ci/run installs it")
def test_real_fashion_mnist_from_debian(tmp_path):
    ds = wb.load_dataset("fashion-mnist", root=tmp_path, download=False)
    _check(ds, "fashion-mnist", (1, 28, 28), 10)
    assert len(ds.y_train) == 60000 and len(ds.y_test) == 10000
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10


# --- Dataset.fingerprint -------------------------------------------------------------------------

def _tiny(name="tiny", classes=("a", "b")):
    x = torch.arange(24, dtype=torch.float32).reshape(3, 2, 2, 2) / 24
    return wb_data.Dataset(name, x, torch.tensor([0, 1, 1]), x[:1], torch.tensor([1]), classes)


def test_fingerprint_is_sha256_of_dtypes_shapes_bytes_and_classes():
    ds = _tiny()
    h = hashlib.sha256(b"workbench.Dataset.fingerprint v1\n")
    for key in ("x_train", "y_train", "x_test", "y_test"):
        t = getattr(ds, key)
        header = {"tensor": key, "dtype": str(t.dtype), "shape": list(t.shape)}
        h.update((json.dumps(header) + "\n").encode() + t.numpy().tobytes())
    h.update(b'{"classes": ["a", "b"]}\n')
    assert ds.fingerprint == h.hexdigest()
    # Pinned: the same data gives this string in every process and on every machine; a change to
    # what is hashed must bump FINGERPRINT_VERSION (cached runs are keyed on it).
    assert ds.fingerprint == "91c61303e66c8b2c4affb62b3cce8d3a6dafa5f8a0e2e8a9ba383a71be6d66c7"


def test_fingerprint_ignores_name_and_info_but_not_classes():
    ds = _tiny()
    assert _tiny(name="other").fingerprint == ds.fingerprint
    assert dataclasses.replace(ds, info={"root": "/elsewhere"}).fingerprint == ds.fingerprint
    assert _tiny(classes=("a", "c")).fingerprint != ds.fingerprint


def test_fingerprint_same_for_same_content_in_two_folders(tmp_path):
    write_idx(tmp_path / "a", "MNIST", seed=0)
    write_idx(tmp_path / "b", "MNIST", seed=0)
    a = wb.load_dataset("mnist", root=tmp_path / "a", download=False)
    b = wb.load_dataset("mnist", root=tmp_path / "b", download=False)
    assert a.info["root"] != b.info["root"] and a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 64 and int(a.fingerprint, 16) >= 0


def test_fingerprint_differs_for_other_images(tmp_path):
    write_idx(tmp_path / "a", "MNIST", seed=0)
    write_idx(tmp_path / "b", "MNIST", seed=1)
    a = wb.load_dataset("mnist", root=tmp_path / "a", download=False)
    b = wb.load_dataset("mnist", root=tmp_path / "b", download=False)
    assert torch.equal(a.y_train, b.y_train) and a.fingerprint != b.fingerprint


@pytest.mark.parametrize("file, offset", [("train-images-idx3-ubyte", 16 + 5 * 784 + 400),
                                          ("t10k-images-idx3-ubyte", 16),
                                          ("train-labels-idx1-ubyte", 8 + 7),
                                          ("t10k-labels-idx1-ubyte", 8 + 11)])
def test_fingerprint_changes_with_one_byte_of_any_file(tmp_path, file, offset):
    write_idx(tmp_path / "a", "MNIST", seed=0)
    write_idx(tmp_path / "b", "MNIST", seed=0)
    path = tmp_path / "b" / "MNIST" / "raw" / file
    blob = bytearray(path.read_bytes())
    blob[offset] = (blob[offset] + 1) % 10  # a label stays a valid class
    path.write_bytes(bytes(blob))
    a = wb.load_dataset("mnist", root=tmp_path / "a", download=False)
    b = wb.load_dataset("mnist", root=tmp_path / "b", download=False)
    assert a.fingerprint != b.fingerprint


def test_fingerprint_changes_with_one_label():
    ds = _tiny()
    y = ds.y_train.clone()
    y[2] = 0
    assert dataclasses.replace(ds, y_train=y).fingerprint != ds.fingerprint


def test_fingerprint_of_truncated_dataset_differs(tmp_path):
    write_idx(tmp_path, "MNIST", n_train=30, n_test=12)
    full = wb.load_dataset("mnist", root=tmp_path, download=False)
    small = wb.load_dataset("mnist", root=tmp_path, download=False, max_train=29)
    fewer_test = wb.load_dataset("mnist", root=tmp_path, download=False, max_test=11)
    assert small.info["max_train"] == 29 and small.info["max_test"] is None
    assert len({full.fingerprint, small.fingerprint, fewer_test.fingerprint}) == 3


def test_fingerprint_is_not_a_dataclass_field():
    ds = _tiny()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "x"
    assert "fingerprint" not in repr(ds)
    assert "fingerprint" not in {f.name for f in dataclasses.fields(ds)}


def test_fingerprint_same_for_chunks_views_and_copies(monkeypatch):
    ds = _tiny()
    expected = ds.fingerprint
    # a non-contiguous tensor with the same values hashes as its contiguous copy
    xt = ds.x_train.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xt.is_contiguous() and torch.equal(xt, ds.x_train)
    assert dataclasses.replace(ds, x_train=xt).fingerprint == expected
    # chunk boundaries do not matter: 16-byte chunks are under one 32-byte image, one image each
    monkeypatch.setattr(wb_data, "_HASH_CHUNK_BYTES", 16)
    assert dataclasses.replace(ds).fingerprint == expected


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_fingerprint_is_stable(tmp_path):
    # its time (about 0.1 s) is measured in benchmarks/cache.py, not asserted here
    ds = wb.load_dataset("fashion-mnist", root=tmp_path, download=False)
    again = wb.load_dataset("fashion-mnist", root=tmp_path / "other", download=False)
    assert re.fullmatch(r"[0-9a-f]{64}", ds.fingerprint) and ds.fingerprint == again.fingerprint


# --- CIFAR-10: published checksums, and no code from data files ---------------------------------

def _cifar_files(tmp_path):
    return tmp_path / "cifar-10-batches-py"


def test_cifar10_batch_values_labels_and_layout(tmp_path):
    write_cifar(tmp_path, n_per_batch=4, seed=7)
    base = _cifar_files(tmp_path)
    ds = wb.load_dataset("cifar10", root=tmp_path, download=False, verify_checksums=False)
    raw = pickle.loads((base / "data_batch_2").read_bytes(), encoding="latin1")  # our own file
    # row = 1024 red, 1024 green, 1024 blue, each 32x32 row-major: image 4 is batch 2's first
    assert torch.equal(ds.x_train[4], torch.from_numpy(raw["data"][0]).reshape(3, 32, 32) / 255.0)
    assert ds.y_train.tolist() == [0, 1, 2, 3] * 5 and ds.y_test.tolist() == [0, 1, 2, 3]
    assert ds.classes == tuple(CIFAR_NAMES)


def test_official_cifar10_layout_needs_only_three_numpy_globals(tmp_path):
    # py2_pickle writes what Python 2's cPickle wrote for the official batches: a dict of py2
    # strings, a list of ints and numpy 1.x's array reduction. Those name three globals only.
    write_cifar(tmp_path, n_per_batch=3)
    blob = (_cifar_files(tmp_path) / "data_batch_1").read_bytes()
    assert blob[:2] == b"\x80\x02"
    names = {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(blob)
             if op.name == "GLOBAL"}
    assert names == {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
    ds = wb.load_dataset("cifar10", root=tmp_path, download=False, verify_checksums=False)
    assert len(ds.y_train) == 15


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar10_batches_built_with_python3_pickle_load(tmp_path, protocol):
    # numpy 2 names numpy._core; protocol 2 rebuilds bytes with _codecs.encode; 5 uses _frombuffer
    write_cifar(tmp_path, n_per_batch=5, protocol=protocol)
    ds = wb.load_dataset("cifar10", root=tmp_path, download=False, verify_checksums=False)
    _check(ds, "cifar10", (3, 32, 32), 10)
    assert len(ds.y_train) == 25 and ds.classes[-1] == "truck"


# --- CIFAR-10: memory a file may make the reader build (issue 22) ---------------------------------

def _crafted_encode_copies(copies, size=1 << 20):
    """A batch whose 'junk' list holds `copies` calls _codecs.encode(<one memoised 1 MiB str>,
    'latin1'): 7 bytes of file for each new 1 MiB bytes object."""
    out = bytearray(b"\x80\x02}q\x00(X\x04\x00\x00\x00junk]q\x01(c_codecs\nencode\nq\x02")
    out += b"X" + struct.pack("<I", size) + b"a" * size + b"q\x03X\x06\x00\x00\x00latin1q\x04"
    out += b"h\x02h\x03h\x04\x86R" * copies
    return bytes(out + b"eX\x04\x00\x00\x00data]X\x06\x00\x00\x00labels]u.")


def _crafted_array_copies(copies, size=1 << 20):
    """A batch whose 'junk' list holds `copies` uint8 arrays, each built (as the official files
    build theirs) from the same memoised 1 MiB string of raw bytes."""
    head = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01J"
            + struct.pack("<i", size) + b"\x85cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNN"
            b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
    out = bytearray(b"\x80\x02}(U\x04junk](")
    out += head + b"T" + struct.pack("<i", size) + b"\x00" * size + b"q\x05tb"
    out += (head + b"h\x05tb") * (copies - 1)
    return bytes(out + b"eU\x04data]U\x06labels]u.")


def _peak_reading(path):
    """The error and the peak of traced allocations (numpy's arrays and Python objects) of
    reading `path` as a CIFAR-10 batch."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as err:
            wb_data._read_cifar_batch(path)
        return str(err.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("craft, what", [(_crafted_encode_copies, "`_codecs.encode`"),
                                         (_crafted_array_copies, "an array's state")])
def test_a_cifar_file_that_copies_one_object_many_times_is_refused_within_its_budget(
        tmp_path, craft, what):
    """Through the pickle memo, a few bytes of file can stamp out another copy of a large object:
    64 copies of 1 MiB from a 1 MiB file took 65 MiB before the budget (traced peak, either way);
    now reading stops at the budget, 2x the file + 16 MiB (peak 19 MiB), with a clear error."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(craft(64))
    size = path.stat().st_size
    message, peak = _peak_reading(path)
    assert re.search(rf"refuses to load CIFAR-10 file .*data_batch_1: {re.escape(what)} would take "
                     rf"the arrays and bytes it builds past 2x the file's {size:,} bytes", message)
    limit = wb_data.CIFAR_BUILT_PER_FILE_BYTE * size + wb_data.CIFAR_MEMORY_SLACK
    assert peak < limit + 4 * size  # was 64 MiB and more


def test_a_cifar_file_of_many_tiny_objects_is_refused_before_reading(tmp_path):
    """300,000 one-byte EMPTY_LIST opcodes build 300,000 lists (72 bytes each: 21 MiB from 0.3 MB
    before); the opcode estimate refuses the file before anything is built."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02}(X\x04\x00\x00\x00junk(" + b"]" * 300_000
                     + b"lX\x04\x00\x00\x00data]u.")
    message, peak = _peak_reading(path)
    assert "could build about" in message and "Nothing was read from it" in message
    assert peak < 4 << 20  # the estimate reads one opcode at a time


@pytest.mark.parametrize("protocol", [None, 2, 3, 5])
def test_cifar_batches_of_every_format_fit_the_memory_budget_with_little_slack(
        tmp_path, monkeypatch, protocol):
    """The budget is 2x the file for what the allowed calls build, and the opcode estimate 2x:
    batches of 40 images (120 KiB) fit both with 32 KiB of slack, which the tiny batches.meta
    needs (protocol 2 rebuilds the image bytes with _codecs.encode, then copies them into the
    array: 2x the images)."""
    monkeypatch.setattr(wb_data, "CIFAR_MEMORY_SLACK", 32 << 10)
    write_cifar(tmp_path, n_per_batch=40, protocol=protocol)
    ds = wb.load_dataset("cifar10", root=tmp_path, download=False, verify_checksums=False)
    assert len(ds.y_train) == 200 and ds.classes[0] == "airplane"
    assert type(wb_data._read_cifar_batch(tmp_path / wb_data.CIFAR10_DIR / "test_batch")[0]) \
        is np.ndarray  # a plain array out, not the reader's counting subclass


def test_cifar10_checksums_match_torchvisions_published_ones():
    from torchvision.datasets import CIFAR10

    assert [list(f) for f in wb_data.CIFAR10_TRAIN_FILES] == CIFAR10.train_list
    assert [list(f) for f in wb_data.CIFAR10_TEST_FILES] == CIFAR10.test_list
    assert wb_data.CIFAR10_META_FILE == (CIFAR10.meta["filename"], CIFAR10.meta["md5"])


def test_cifar10_wrong_checksum_names_the_file_and_the_opt_out(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(ValueError, match=r"data_batch_1 has MD5 [0-9a-f]{32}, not the published "
                                         r"c99cafc152244af753f735de768cd75f \(6 more files.*"
                                         r"verify_checksums=False"):
        wb.load_dataset("cifar10", root=tmp_path, download=False)


def test_cifar10_checksum_is_checked_before_anything_is_unpickled(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    monkeypatch.setattr(wb_data, "_CifarUnpickler", None)  # any unpickling would now fail
    with pytest.raises(ValueError, match="not the published"):
        wb.load_dataset("cifar10", root=tmp_path, download=False)


def test_cifar10_is_never_unpickled_by_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    write_cifar(tmp_path)
    monkeypatch.setattr(tv_cifar, "pickle", None)  # torchvision's reader would fail
    ds = wb.load_dataset("cifar10", root=tmp_path, download=False, verify_checksums=False)
    assert len(ds.y_test) == 6


def test_verify_checksums_must_be_a_bool(tmp_path):
    with pytest.raises(TypeError, match=r"`verify_checksums` must be True or False; got 'no'\."):
        wb.load_dataset("cifar10", root=tmp_path, download=False, verify_checksums="no")
    with pytest.raises(TypeError, match="`verify_checksums`"):
        wb.load_dataset("digits", verify_checksums=1)


class _RunsShell:
    """Pickles to `os.system(command)`: unpickling it with plain pickle runs the command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _crafted(file: str, marker: Path) -> bytes:
    payload = _RunsShell(f"touch {marker}")
    if file == "batches.meta":
        return pickle.dumps({"label_names": payload}, protocol=2)
    return pickle.dumps({"data": payload, "labels": [0]}, protocol=2)


def test_crafted_pickle_really_runs_its_command(tmp_path):
    # The payload the next tests plant is live: plain pickle runs it.
    marker = tmp_path / "ran"
    pickle.loads(_crafted("data_batch_1", marker))
    assert marker.exists()


def _publish(monkeypatch, base):
    """Pretend the files now in `base` are the official ones: their MD5s become the published."""
    md5 = lambda f: hashlib.md5((base / f).read_bytes()).hexdigest()  # noqa: E731
    for table in ("CIFAR10_TRAIN_FILES", "CIFAR10_TEST_FILES"):
        monkeypatch.setattr(wb_data, table, tuple((f, md5(f)) for f, _ in getattr(wb_data, table)))
    name = wb_data.CIFAR10_META_FILE[0]
    monkeypatch.setattr(wb_data, "CIFAR10_META_FILE", (name, md5(name)))


def test_cifar10_with_the_published_checksums_loads_verified(tmp_path, monkeypatch):
    write_cifar(tmp_path, n_per_batch=3)
    _publish(monkeypatch, _cifar_files(tmp_path))
    ds = wb.load_dataset("cifar10", root=tmp_path, download=False)
    assert len(ds.y_train) == 15 and ds.info["checksums_verified"] is True


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("file", ["data_batch_3", "test_batch", "batches.meta"])
def test_crafted_cifar_file_is_refused_and_runs_nothing(tmp_path, monkeypatch, file, verify):
    write_cifar(tmp_path)
    _publish(monkeypatch, _cifar_files(tmp_path))  # every other file is as published
    marker = tmp_path / "pwned"
    path = _cifar_files(tmp_path) / file
    path.write_bytes(_crafted(file, marker))
    expected = (r"has MD5 [0-9a-f]{32}, not the published [0-9a-f]{32}: it is not the official"
                if verify else
                r"refuses to load CIFAR-10 file .*: it references `(posix|nt|os)\.system`, which "
                r"a CIFAR-10 batch never contains")
    with pytest.raises(ValueError, match=expected) as info:
        wb.load_dataset("cifar10", root=tmp_path, download=False, verify_checksums=verify)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("batch, message", [
    ([1, 2], "must hold a dict; got list"),
    ({"labels": [0]}, r"`data` must be a uint8 array of shape \(N, 3072\) with N >= 1; got no"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "got float32 array"),
    ({"data": np.zeros((2, 3071), np.uint8), "labels": [0, 1]}, r"shape \(2, 3071\)"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "one label per image \\(2\\); got 1"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, r"in \[0, 9\]; got 10"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, True]}, "list of ints"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": "01"}, "list of ints; got str"),
])
def test_cifar10_batch_structure_is_checked(tmp_path, batch, message):
    write_cifar(tmp_path)
    path = _cifar_files(tmp_path) / "data_batch_2"
    path.write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(ValueError, match=message) as info:
        wb.load_dataset("cifar10", root=tmp_path, download=False, verify_checksums=False)
    assert str(path) in str(info.value)


def test_cifar10_meta_and_damaged_files_are_checked(tmp_path):
    write_cifar(tmp_path)
    base = _cifar_files(tmp_path)
    (base / "batches.meta").write_bytes(py2_pickle({"label_names": ["a", "b"]}))
    with pytest.raises(ValueError, match=r"batches.meta: `label_names` must be a list of 10"):
        wb.load_dataset("cifar10", root=tmp_path, download=False, verify_checksums=False)
    (base / "test_batch").write_bytes((base / "data_batch_1").read_bytes()[:500])
    with pytest.raises(ValueError, match=r"test_batch is not a readable pickle"):
        wb.load_dataset("cifar10", root=tmp_path, download=False, verify_checksums=False)


def test_cifar10_download_goes_through_torchvision_then_the_safe_reader(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils
    from torchvision.datasets import CIFAR10

    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, download_root, filename, md5))
        write_cifar(Path(download_root), n_per_batch=2)  # stands in for the unpacked archive

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    ds = wb.load_dataset("cifar10", root=tmp_path, download=True, verify_checksums=False)
    assert calls == [(CIFAR10.url, str(tmp_path), CIFAR10.filename, CIFAR10.tgz_md5)]
    assert len(ds.y_train) == 10
    # files present: no second download; and without the opt-out the checksums are checked
    with pytest.raises(ValueError, match="not the published"):
        wb.load_dataset("cifar10", root=tmp_path, download=True)
    assert len(calls) == 1


# --- MNIST / Fashion-MNIST: raw IDX files only; GTSRB: PPM only ----------------------------------

def _plant_pickled_cache(root: Path, folder: str, marker: Path) -> None:
    """torchvision's old `processed/{training,test}.pt` cache, here a pickle that runs a command."""
    processed = root / folder / "processed"
    processed.mkdir(parents=True)
    for name in ("training.pt", "test.pt"):
        (processed / name).write_bytes(pickle.dumps(_RunsShell(f"touch {marker}"), protocol=2))


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_datasets_never_read_torchvisions_pickled_cache(tmp_path, monkeypatch, name, folder):
    from torchvision.datasets import MNIST

    write_idx(tmp_path / "clean", folder, seed=2)
    write_idx(tmp_path / "planted", folder, seed=2)
    marker = tmp_path / "pwned"
    _plant_pickled_cache(tmp_path / "planted", folder, marker)
    # torchvision 0.17 loads that cache with torch.load and no weights_only: on torch < 2.6 that
    # is plain unpickling. Stand in for it here, whatever the installed versions do.
    legacy = []

    def old_torchvision_load(self):
        legacy.append(self)
        with open(os.path.join(self.processed_folder, self.training_file), "rb") as f:
            return pickle.load(f)

    monkeypatch.setattr(MNIST, "_load_legacy_data", old_torchvision_load)
    clean = wb.load_dataset(name, root=tmp_path / "clean", download=False)
    planted = wb.load_dataset(name, root=tmp_path / "planted", download=False)
    assert not legacy and not marker.exists()
    assert planted.fingerprint == clean.fingerprint  # the raw files, read as ever


def test_pickled_cache_alone_is_not_loaded(tmp_path):
    marker = tmp_path / "pwned"
    _plant_pickled_cache(tmp_path, "MNIST", marker)
    with pytest.raises(FileNotFoundError, match=r"processed are not read: they are torchvision's "
                                                r"old pickled cache"):
        wb.load_dataset("mnist", root=tmp_path, download=False)
    assert not marker.exists()


def test_gtsrb_decodes_ppm_only(tmp_path):
    from PIL import Image

    write_gtsrb(tmp_path, classes=(0, 1), per_class=2, n_test=2)
    # PostScript named like a GTSRB image: PIL alone would hand it to Ghostscript to render
    path = tmp_path / "gtsrb" / "GTSRB" / "Training" / "00001" / "00001.ppm"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 30 30\nshowpage\n")
    with Image.open(path) as img:
        assert img.format == "EPS"
    with pytest.raises(ValueError, match=rf"GTSRB image {path} is not a PPM image"):
        wb.load_dataset("gtsrb", root=tmp_path, download=False)


@pytest.mark.parametrize("bad", ["../../../secret.ppm", "/etc/hostname", ".."])
def test_gtsrb_test_csv_cannot_name_files_outside_its_folder(tmp_path, bad):
    write_gtsrb(tmp_path, classes=(0, 1), per_class=2, n_test=2)
    csv_path = tmp_path / "gtsrb" / "GT-final_test.csv"
    lines = csv_path.read_text().splitlines()
    lines[1] = bad + lines[1][lines[1].index(";"):]
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="names an image outside"):
        wb.load_dataset("gtsrb", root=tmp_path, download=False)


def test_fingerprint_follows_in_place_changes(digits):
    ds = wb.data.Dataset("digits", digits.x_train.clone(), digits.y_train.clone(), digits.x_test,
                         digits.y_test, digits.classes)
    before = ds.fingerprint
    ds.x_train[0, 0, 0, 0] += 0.5  # in place, counted by torch (Tensor._version)
    assert ds.fingerprint != before
    changed = ds.fingerprint
    ds.x_train.numpy()[1, 0, 0, 0] += 0.5  # in place, not counted by torch
    assert ds.fingerprint != changed
    ds.y_train.data[1] = (ds.y_train[1] + 1) % 10  # through .data: its own version counter
    assert len({before, changed, ds.fingerprint}) == 3

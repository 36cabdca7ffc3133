import multiprocessing as mp
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench import data as wb_data
from helpers import write_cifar, write_gtsrb, write_idx


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
    write_cifar(tmp_path, n_per_batch=6)
    ds = wb.load_dataset("cifar10", root=tmp_path, download=False)
    _check(ds, "cifar10", (3, 32, 32), 10)
    assert len(ds.y_train) == 30 and len(ds.y_test) == 6 and ds.classes[1] == "automobile"


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

"""open_model and the loaders of models trained elsewhere (workbench.base.checkpoints,
workbench.base.preact_resnet, workbench.training.opened). Every file is written by the test in its
format; nothing is downloaded. Models are the digits run (shared, cached) or untrained ones."""

import builtins
import html
import io
import warnings
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from workbench import atlas, landscape
from workbench.experiments import smoothing_analysis
from workbench.base import checkpoints as ck
from workbench.base.preact_resnet import preact_resnet18
from workbench.models import build_model
from workbench.smoothness import estimate_smoothness
from workbench.training.opened import (FunctionTrigger, Normalize, OpenedRun, PairedTrigger,
                                       Preprocessed, as_images, open_model)
from workbench.training.opened_examples import (SHAPES, coloured_shapes,
                                                write_backdoorbench_record)
from workbench.triggers import Patch

CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))  # BackdoorBench's


def near_chance_ok():
    """Untrained models are near chance by construction: their warning is expected."""
    return pytest.warns(UserWarning, match="near chance")


@pytest.fixture(scope="module")
def state_file(tmp_path_factory, digits_run):
    path = tmp_path_factory.mktemp("ckpt") / "digits_cnn.pt"
    torch.save(digits_run.model.state_dict(), path)
    return path


# --- PreAct-ResNet-18 ---------------------------------------------------------------------------

def test_preact_resnet18_has_backdoorbench_names_and_shapes():
    net = preact_resnet18(10)
    state = net.state_dict()
    # BackdoorBench's models/preact_resnet.py: 102 entries, 11,171,146 parameters for K = 10
    assert len(state) == 102
    assert sum(p.numel() for p in net.parameters()) == 11_171_146
    assert list(state)[:7] == ["conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias",
                               "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var",
                               "layer1.0.bn1.num_batches_tracked", "layer1.0.conv1.weight"]
    assert list(state)[-2:] == ["linear.weight", "linear.bias"]
    assert tuple(state["conv1.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["layer2.0.shortcut.0.weight"].shape) == (128, 64, 1, 1)
    assert "layer1.0.shortcut.0.weight" not in state  # same shape: the identity shortcut
    assert preact_resnet18(43)(torch.rand(2, 3, 32, 32)).shape == (2, 43)


# --- state dicts --------------------------------------------------------------------------------

def test_state_dict_opens_with_metrics_of_the_run(state_file, digits, digits_run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a working model raises no near-chance warning
        run = open_model(state_file, digits, trigger=Patch(size=3), target=0,
                         architecture="small-cnn", device="cpu")
    assert isinstance(run, OpenedRun) and run.trained_here is False
    assert run.history is None and run.poison_indices is None and run.train_seconds is None
    assert run.format == "state dict" and run.architecture == "small-cnn"
    assert run.clean_accuracy == pytest.approx(digits_run.clean_accuracy)
    assert run.attack_success_rate == pytest.approx(digits_run.attack_success_rate)
    assert run.config["data_fingerprint"] == digits.fingerprint
    pairs = run.triggered_pairs(digits.x_test, digits.y_test, n=5, seed=0)
    want = digits_run.triggered_pairs(digits.x_test, digits.y_test, n=5, seed=0)
    assert torch.equal(pairs.indices, want.indices) and torch.equal(pairs.triggered, want.triggered)


def test_checkpoint_dict_and_dataparallel_prefix(tmp_path, digits, digits_run):
    state = {f"module.{k}": v for k, v in digits_run.model.state_dict().items()}
    torch.save({"epoch": 30, "model_state_dict": state, "best_acc": 0.98}, tmp_path / "ck.pth")
    run = open_model(tmp_path / "ck.pth", digits, architecture="small-cnn", device="cpu")
    assert run.info["checkpoint_key"] == "model_state_dict"
    assert run.info["removed_prefix"] == "module."
    assert run.clean_accuracy == pytest.approx(digits_run.clean_accuracy)


def test_wrong_architecture_lists_missing_unexpected_and_shapes(state_file, digits):
    with pytest.raises(ck.CheckpointError) as err:
        open_model(state_file, digits, architecture="lenet5", device="cpu")
    msg = str(err.value)
    assert str(state_file) in msg and "'lenet5'" in msg
    assert "missing: head.5.weight; head.5.bias" in msg
    assert "features.0.weight: file (16, 1, 3, 3), architecture (6, 1, 5, 5)" in msg
    with pytest.raises(ck.CheckpointError, match=r"unexpected: features\.0\.weight"):
        open_model(state_file, digits, architecture="mlp", device="cpu")
    with pytest.raises(ValueError, match="`architecture` must name the architecture"):
        open_model(state_file, digits, device="cpu")
    with pytest.raises(ValueError, match="`architecture` must be one of"):
        open_model(state_file, digits, architecture="vgg", device="cpu")


def test_torchvision_architectures(tmp_path):
    x = torch.rand(6, 3, 32, 32)
    y = torch.arange(6) % 10
    # torchvision's own constructor, unmodified
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pt")
    with near_chance_ok():
        run = open_model(tmp_path / "tv.pt", (x, y), architecture="torchvision:resnet18",
                         device="cpu")
    with torch.no_grad():
        assert torch.allclose(run.model(x), tv(x), atol=1e-5)
    # the usual 32x32 adaptation, done by a user's own code: it is the zoo's "resnet18"
    adapted = torchvision.models.resnet18(weights=None, num_classes=10)
    adapted.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    adapted.maxpool = nn.Identity()
    adapted.eval()
    torch.save(adapted.state_dict(), tmp_path / "adapted.pt")
    with near_chance_ok():
        run = open_model(tmp_path / "adapted.pt", (x, y), architecture="resnet18", device="cpu")
    with torch.no_grad():
        assert torch.allclose(run.model(x), adapted(x), atol=1e-5)
    with pytest.raises(ck.CheckpointError, match=r"conv1\.weight: file \(64, 3, 3, 3\), "
                                                  r"architecture \(64, 3, 7, 7\)"):
        open_model(tmp_path / "adapted.pt", (x, y), architecture="torchvision:resnet18",
                   device="cpu")
    with pytest.raises(ValueError, match="names no classification model of torchvision"):
        open_model(tmp_path / "tv.pt", (x, y), architecture="torchvision:resnet19", device="cpu")


def test_architecture_given_as_a_module_is_copied(state_file, digits, digits_run):
    blank = build_model("small-cnn", 1, 10, (16, 16))
    before = {k: v.clone() for k, v in blank.state_dict().items()}
    run = open_model(state_file, digits, architecture=blank, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in blank.state_dict().items())
    assert run.clean_accuracy == pytest.approx(digits_run.clean_accuracy)


# --- files that would run code ------------------------------------------------------------------

def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, digits):
    mark = tmp_path / "RAN"

    class Payload:
        def __reduce__(self):
            return builtins.exec, (f"open({str(mark)!r}, 'w').write('ran')",)

    torch.save({"features.0.weight": torch.zeros(1), "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ck.CheckpointError) as err:
        open_model(tmp_path / "evil.pt", digits, architecture="small-cnn", device="cpu")
    assert "refuses to open" in str(err.value) and "`builtins.exec`" in str(err.value)
    assert "Nothing in it was run" in str(err.value)
    assert not mark.exists()


def test_whole_pickled_model_is_refused_with_a_hint(tmp_path, digits, digits_run):
    torch.save(digits_run.model, tmp_path / "whole.pt")
    with pytest.raises(ck.CheckpointError, match=r"save model\.state_dict\(\) instead"):
        open_model(tmp_path / "whole.pt", digits, architecture="small-cnn", device="cpu")


def test_not_a_checkpoint(tmp_path, digits):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match="is not a readable torch.save file"):
        open_model(tmp_path / "junk.pt", digits, architecture="small-cnn", device="cpu")
    torch.save({"epoch": 3, "notes": "hello"}, tmp_path / "nostate.pt")
    with pytest.raises(ck.CheckpointError, match="expected a state dict"):
        open_model(tmp_path / "nostate.pt", digits, architecture="small-cnn", device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_model(tmp_path / "missing.pt", digits, architecture="small-cnn")
    with pytest.raises(ck.CheckpointError, match="is a folder"):
        open_model(tmp_path, digits, architecture="small-cnn")


# --- TorchScript --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torchscript_file(tmp_path_factory, digits, digits_run):
    path = tmp_path_factory.mktemp("ts") / "digits_cnn_ts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in new torch
        traced = torch.jit.trace(digits_run.model.eval(), digits.x_test[:2])
        torch.jit.save(traced, str(path))
    return path


def test_torchscript_needs_trust(torchscript_file, digits, digits_run):
    with pytest.raises(ck.CheckpointError, match="is a TorchScript file, which is a program"):
        open_model(torchscript_file, digits, trigger=Patch(size=3), target=0)
    with pytest.raises(ValueError, match="`architecture` must be None for TorchScript"):
        open_model(torchscript_file, digits, architecture="small-cnn", trust_torchscript=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        run = open_model(torchscript_file, digits, trigger=Patch(size=3), target=0,
                         trust_torchscript=True, device="cpu")
    assert run.format == "torchscript" and run.architecture == "SmallCNN"
    assert isinstance(run.model, torch.jit.ScriptModule)
    assert run.clean_accuracy == pytest.approx(digits_run.clean_accuracy)
    assert run.attack_success_rate == pytest.approx(digits_run.attack_success_rate)
    pairs = run.triggered_pairs(digits.x_test, digits.y_test, n=2)
    lc = landscape.landscape_2d(run.model, pairs.clean[0], trigger=run.trigger, resolution=3,
                                n_samples=4)
    assert lc.predicted.shape == (3, 3)


def test_estimate_smoothness_takes_a_torchscript_model(torchscript_file, digits):
    """The batch-size probe registered forward hooks, which ScriptModules refuse (RuntimeError
    before the fix): a TorchScript model now gets the rule's batch, and the same W_σ."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        run = open_model(torchscript_file, digits, trust_torchscript=True, device="cpu")
    res = estimate_smoothness(run.model, digits.x_test[:2], [0.1, 0.3], 16)
    ref = estimate_smoothness(run.model, digits.x_test[:2], [0.1, 0.3], 16,
                              batch_size=res.settings["batch_size"])
    assert np.array_equal(res.counts, ref.counts)


# --- BackdoorBench ------------------------------------------------------------------------------

def _stamp(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    out[-4:-1, -4:-1] = 255  # a white 3x3 patch (BadNets), (H, W, C)
    return out


def _stamp_batch(b):
    """The same white 3x3 patch on (N, C, H, W) batches in [0, 1]."""
    b[..., -4:-1, -4:-1] = 1.0
    return b


def write_backdoorbench(root, net, x_hwc, y, target=0, version=2, prefix=False, in_ram=False):
    """An attack result as BackdoorBench's save_attack_result writes it (the library's writer,
    `write_backdoorbench_record`, shared with notebook 09): record/<name>/attack_result.pt, and
    (version 2) the backdoored test images as PNG files in
    record/<name>/bd_test_dataset/<true label>/<test index>.png."""
    path = write_backdoorbench_record(root / "record" / "badnet_demo", net, x_hwc, y, _stamp_batch,
                                      target, version=version,
                                      state_prefix="module." if prefix else "",
                                      pickled_images=in_ram)
    return path, np.nonzero(y != target)[0]  # all-to-one: every non-target test image


@pytest.fixture(scope="module")
def cifar_like():
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)  # (N, H, W, C), as CIFAR's arrays
    y = np.array([0, 1, 2, 3, 0, 5, 6, 7, 8, 9])
    torch.manual_seed(0)
    return x, y, preact_resnet18(10).eval()


@pytest.mark.parametrize("version,prefix", [(2, False), (2, True), (1, False)])
def test_backdoorbench_attack_result_opens(tmp_path, cifar_like, version, prefix):
    x, y, net = cifar_like
    path, idx = write_backdoorbench(tmp_path, net, x, y, version=version, prefix=prefix)
    with near_chance_ok():
        run = open_model(path, (x, y), device="cpu")
    assert run.format == "backdoorbench" and run.architecture == "preactresnet18"
    assert run.target == 0 and run.target_mode == "all-to-one"
    assert run.info["backdoorbench_version"] == version
    assert (run.info.get("removed_prefix") == "module.") == prefix
    # the model takes images in [0, 1]: BackdoorBench's CIFAR-10 normalisation comes first
    assert isinstance(run.model, Preprocessed) and isinstance(run.model.preprocess, Normalize)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR10_NORM)
    with torch.no_grad():
        assert torch.allclose(run.model(xt), net((xt - mean) / std), atol=1e-5)
    # the backdoored images are paired with their clean test images by index
    pairs = run.triggered_pairs(run.data.x_test, run.data.y_test)
    assert pairs.indices.tolist() == idx.tolist()
    want = torch.from_numpy(np.stack([_stamp(x[i]) for i in idx])).permute(0, 3, 1, 2) / 255
    assert torch.equal(pairs.triggered, want.float())
    assert torch.equal(pairs.clean, xt[idx])
    assert 0.0 <= run.attack_success_rate <= 1.0


def test_backdoorbench_checks_pairing_and_files(tmp_path, cifar_like):
    x, y, net = cifar_like
    path, idx = write_backdoorbench(tmp_path, net, x, y)
    with pytest.raises(ValueError, match="must be the test set the attack used"):
        open_model(path, (x, np.roll(y, 1)), device="cpu")
    with pytest.raises(ValueError, match="`trigger` must be None for BackdoorBench file"):
        open_model(path, (x, y), trigger=Patch(size=3), target=0, device="cpu")
    with pytest.raises(ValueError, match="`target` must agree with"):
        open_model(path, (x, y), target=3, device="cpu")
    png = path.parent / "bd_test_dataset" / str(int(y[idx[0]])) / f"{idx[0]}.png"
    png.unlink()
    with pytest.raises(ck.CheckpointError, match="is missing. BackdoorBench saves them as PNG"):
        open_model(path, (x, y), device="cpu")
    # a file that is not PNG under a .png name is not decoded
    png.write_bytes(b"%!PS-Adobe-3.0\n")
    with pytest.raises(ck.CheckpointError, match="is not a readable PNG"):
        open_model(path, (x, y), device="cpu")


def test_backdoorbench_with_pickled_images_is_refused(tmp_path, cifar_like):
    x, y, net = cifar_like
    path, _ = write_backdoorbench(tmp_path, net, x, y, in_ram=True)
    with pytest.raises(ck.CheckpointError) as err:
        open_model(path, (x, y), device="cpu")
    assert "`PIL.Image.Image`" in str(err.value) and "pickled PIL images" in str(err.value)


def test_backdoorbench_record_all_to_all_grayscale_and_another_model(tmp_path, digits,
                                                                     digits_run):
    """The writer's other paths: all-to-all labels, one-channel PNGs, a model BackdoorBench does
    not name (opened with `architecture=`) and a dataset whose normalisation it does not list
    (opened with `preprocess=`)."""
    x8 = (digits.x_test.numpy() * 255).round().astype(np.uint8)  # (N, 1, 16, 16)
    y = digits.y_test.numpy()
    patch = Patch(size=3)
    path = write_backdoorbench_record(tmp_path / "rec", digits_run.model, x8, y, patch,
                                      "all-to-all", model_name="small-cnn", clean_data="digits")
    assert len(list((tmp_path / "rec" / "bd_test_dataset").rglob("*.png"))) == len(y)
    with pytest.raises(ck.CheckpointError, match="'small-cnn' is not one the workbench builds"):
        open_model(path, (x8, y), device="cpu")
    with pytest.raises(ValueError, match="`preprocess` must be given for"):
        open_model(path, (x8, y), architecture="small-cnn", device="cpu")
    run = open_model(path, (x8, y), architecture="small-cnn", preprocess=((0.0,), (1.0,)),
                     device="cpu")
    assert run.target_mode == "all-to-all" and run.data.image_shape == (1, 16, 16)
    assert run.clean_accuracy == pytest.approx(digits_run.clean_accuracy, abs=0.01)
    pairs = run.triggered_pairs(run.data.x_test, run.data.y_test, n=5, seed=0)
    assert torch.equal(pairs.targets, (pairs.labels + 1) % 10)
    assert torch.equal(pairs.triggered, patch(pairs.clean))  # the clean images are uint8 here
    # nothing is overwritten; a twin per test image is needed; bad arguments before any work
    with pytest.raises(FileExistsError, match="already holds an attack_result.pt"):
        write_backdoorbench_record(tmp_path / "rec", digits_run.model, x8, y, patch, 0)
    with pytest.raises(ValueError, match="one triggered twin per test image"):
        write_backdoorbench_record(tmp_path / "r2", digits_run.model, x8, y, x8[:5], 0)
    with pytest.raises(TypeError, match="`trigger` must be a workbench Trigger"):
        write_backdoorbench_record(tmp_path / "r2", digits_run.model, x8, y, "patch", 0)
    with pytest.raises(ValueError, match="`target` must be an int in \\[0, 9\\]"):
        write_backdoorbench_record(tmp_path / "r2", digits_run.model, x8, y, patch, 10)
    with pytest.raises(TypeError, match="`model` must be an nn.Module or a state dict"):
        write_backdoorbench_record(tmp_path / "r2", "model.pt", x8, y, patch, 0)
    assert not (tmp_path / "r2").exists()


def test_coloured_shapes_is_a_seeded_colour_dataset():
    a = coloured_shapes(n_train=40, n_test=12, seed=3)
    assert a.x_train.shape == (40, 3, 32, 32) and a.x_test.shape == (12, 3, 32, 32)
    assert a.classes == SHAPES and a.num_classes == 4
    assert torch.bincount(a.y_train).tolist() == [10] * 4
    assert 0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1
    assert torch.equal(a.x_train, torch.round(a.x_train * 255) / 255)  # uint8 values, as a PNG
    assert coloured_shapes(n_train=40, n_test=12, seed=3).fingerprint == a.fingerprint
    assert coloured_shapes(n_train=40, n_test=12, seed=4).fingerprint != a.fingerprint
    b = coloured_shapes(n_train=40, n_test=30, seed=3)  # the test split's size leaves train alone
    assert torch.equal(b.x_train, a.x_train) and torch.equal(b.y_train, a.y_train)
    assert coloured_shapes(n_train=8, n_test=4, size=16).x_test.shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="`n_train` must be an int"):
        coloured_shapes(n_train=0)
    with pytest.raises(TypeError, match="`seed` must be an int"):
        coloured_shapes(seed=0.5)


def test_numpy_arrays_of_numpy_1_and_2_are_read(tmp_path):
    """BackdoorBench's index arrays are numpy: files written under numpy 1 name its
    `numpy.core.multiarray`, under numpy 2 `numpy._core.multiarray`; both are read, as data."""
    buf = io.BytesIO()
    torch.save({"idx": np.arange(3), "keys": {np.int64(2): [1, 0]}}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(tmp_path / "np1.pt", "w", zipfile.ZIP_STORED) as out:
        for n in src.namelist():
            blob = src.read(n)
            if n.endswith("data.pkl"):
                blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                assert b"numpy.core.multiarray" in blob
            out.writestr(n, blob)
    (tmp_path / "np2.pt").write_bytes(buf.getvalue())
    for name in ("np1.pt", "np2.pt"):
        got = ck.read_checkpoint(tmp_path / name)
        assert got["idx"].tolist() == [0, 1, 2] and got["keys"] == {2: [1, 0]}


# --- data ---------------------------------------------------------------------------------------

def test_arrays_in_every_layout(digits, digits_run):
    x8 = (digits.x_test.numpy() * 255).round().astype(np.uint8)  # (N, 1, H, W)
    y = digits.y_test.numpy()
    keep = x8.copy()
    for arr in (x8, x8[:, 0], x8.transpose(0, 2, 3, 1)):
        run = open_model(digits_run.model, (arr, y))
        assert run.data.image_shape == (1, 16, 16) and run.data.classes[:2] == ("0", "1")
        assert abs(run.clean_accuracy - digits_run.clean_accuracy) < 0.02
    assert np.array_equal(x8, keep)  # the caller's arrays are unchanged
    # resized to the size the model takes, with the shapes recorded
    x20 = torch.nn.functional.interpolate(digits.x_test, size=(20, 20), mode="bilinear")
    run = open_model(digits_run.model, (x20.clamp(0, 1), y), image_size=16, layout="NCHW",
                     classes=[f"digit {i}" for i in range(10)], name="big digits")
    assert run.data.image_shape == (1, 16, 16) and run.data.name == "big digits"
    assert run.data.info["given_shape"] == [450, 1, 20, 20] and run.data.classes[0] == "digit 0"
    assert run.clean_accuracy > 0.9
    with pytest.raises(ValueError, match=r"images of shape \(1, 12, 12\), which the model cannot"):
        open_model(digits_run.model, (x8, y), image_size=12)


def test_bad_data_gets_clear_errors(digits, digits_run):
    x = digits.x_test.numpy()
    y = digits.y_test.numpy()
    with pytest.raises(ValueError, match="look normalised.*preprocess=\\(mean, std\\)"):
        open_model(digits_run.model, ((x - 0.5) / 0.5, y))
    with pytest.raises(ValueError, match="for 0-255 values pass uint8 or divide by 255"):
        open_model(digits_run.model, (x * 255, y))
    with pytest.raises(ValueError, match="layout is ambiguous"):
        as_images("x", np.zeros((2, 3, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="must have shape \\(N"):
        open_model(digits_run.model, (x[0, 0], y))
    with pytest.raises(TypeError, match="must hold int labels"):
        open_model(digits_run.model, (x, y.astype(float)))
    with pytest.raises(ValueError, match=r"must have shape \(450,\)"):
        open_model(digits_run.model, (x, y[:10]))
    rgb = np.repeat(x, 3, axis=1)
    with pytest.raises(ValueError, match="cannot take the data's images.*1.channel"):
        open_model(digits_run.model, (rgb, y))
    with pytest.raises(ValueError, match="labels must be classes of the model"):
        open_model(digits_run.model, (x, y + 5))
    with pytest.raises(ValueError, match="neither a known name nor a folder"):
        open_model(digits_run.model, "no-such-dataset")
    with pytest.raises(ValueError, match="`classes` must name the model's 10 classes"):
        open_model(digits_run.model, (x, y), classes=["a", "b"])


def test_image_folder(tmp_path, digits, digits_run):
    for i in range(40):
        folder = tmp_path / "digits" / f"{int(digits.y_test[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        img = (digits.x_test[i, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match="cannot take the data's images"):
        open_model(digits_run.model, tmp_path / "digits")  # RGB by default
    run = open_model(digits_run.model, tmp_path / "digits", channels=1)
    assert run.data.image_shape == (1, 16, 16) and len(run.data.y_test) == 40
    assert run.data.name == "digits" and run.data.info["source"].startswith("ImageFolder")
    # folder names are the classes, in sorted order (ImageFolder's rule)
    assert list(run.data.classes) == sorted(run.data.classes)
    # images of several sizes need image_size
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "digits" / "0" / "big.png")
    with pytest.raises(ValueError, match="images of 2 sizes.*pass image_size"):
        open_model(digits_run.model, tmp_path / "digits", channels=1)
    assert open_model(digits_run.model, tmp_path / "digits", channels=1,
                      image_size=16).data.image_shape == (1, 16, 16)


# --- triggers and targets -----------------------------------------------------------------------

def test_function_and_paired_triggers(digits, digits_run):
    patch = Patch(size=3)
    run = open_model(digits_run.model, digits, trigger=lambda b: patch(b), target=0)
    assert isinstance(run.trigger, FunctionTrigger)
    assert run.attack_success_rate == pytest.approx(digits_run.attack_success_rate)
    twins = patch(digits.x_test)
    run = open_model(digits_run.model, digits, trigger=twins, target=0)
    assert isinstance(run.trigger, PairedTrigger)
    assert run.attack_success_rate == pytest.approx(digits_run.attack_success_rate)
    pairs = run.triggered_pairs(digits.x_test, digits.y_test, n=3, seed=1)
    assert torch.equal(pairs.triggered, patch(pairs.clean))
    with pytest.raises(ValueError, match="can trigger only their clean twins"):
        run.trigger(torch.rand(1, 1, 16, 16))
    # the landscape's trigger direction works with either
    lc = landscape.landscape_2d(run.model, pairs.clean[0], trigger=run.trigger, resolution=3,
                                n_samples=4)
    assert lc.predicted.shape == (3, 3)
    run = open_model(digits_run.model, digits, trigger=patch, target="all-to-all")
    assert run.target_mode == "all-to-all"
    with pytest.raises(ValueError, match="no single `target`"):
        _ = run.target


def test_bad_triggers_and_targets(digits, digits_run):
    with pytest.raises(ValueError, match="must return images of the shape it is given"):
        open_model(digits_run.model, digits, trigger=lambda b: b[:, :, :8], target=0)
    with pytest.raises(ValueError, match="must hold values in \\[0, 1\\]"):
        open_model(digits_run.model, digits, trigger=lambda b: b + 2, target=0)
    with pytest.raises(ValueError, match="`target` must be the attacker's class"):
        open_model(digits_run.model, digits, trigger=Patch(size=3))
    with pytest.raises(ValueError, match="`target` must be an int in \\[0, 9\\]"):
        open_model(digits_run.model, digits, trigger=Patch(size=3), target=10)
    with pytest.raises(ValueError, match="`target` must be None without a trigger"):
        open_model(digits_run.model, digits, target=0)
    with pytest.raises(ValueError, match="one triggered twin per test image"):
        open_model(digits_run.model, digits, trigger=digits.x_test[:5], target=0)
    with pytest.raises(TypeError, match="`trigger` must be None, a workbench Trigger"):
        open_model(digits_run.model, digits, trigger="patch", target=0)
    with pytest.raises(TypeError, match="`target` must be None, the attacker's class"):
        open_model(digits_run.model, digits, trigger=Patch(size=3), target="all-to-one")


def test_without_a_trigger_the_paired_views_say_why(digits, digits_run):
    run = open_model(digits_run.model, digits)
    assert run.attack_success_rate is None and run.has_trigger is False
    for call in (lambda: run.triggered_pairs(digits.x_test, digits.y_test),
                 lambda: run.trigger, lambda: run.target,
                 lambda: run.measure_asr(digits.x_test, digits.y_test)):
        with pytest.raises(ValueError, match="this model was opened without a trigger: "):
            call()
    x, _, idx = run.clean_inputs(n=5, seed=0)
    assert len(x) == 5 and torch.equal(digits.x_test[idx], x)
    assert "no trigger" in repr(run)


# --- the caller's model and preprocessing -------------------------------------------------------

def test_callers_model_is_not_changed(digits, digits_run):
    net = digits_run.model
    net.train()
    try:
        before = {k: v.clone() for k, v in net.state_dict().items()}
        run = open_model(net, digits, trigger=Patch(size=3), target=0)
        assert net.training and run.model is net
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    finally:
        net.eval()
    with pytest.raises(ValueError, match="`device` must be None when `model` is an nn.Module"):
        open_model(net, digits, device="cpu")
    with pytest.raises(ValueError, match="`architecture` must be None when `model` is"):
        open_model(net, digits, architecture="small-cnn")


def test_preprocess_for_a_model_trained_on_normalised_inputs(digits, digits_run):
    # a model that expects (x - 0.5) / 0.25: the digits model behind the inverse map
    class ExpectsNormalised(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            return self.inner(z * 0.25 + 0.5)

    net = ExpectsNormalised(digits_run.model).eval()
    with near_chance_ok():
        open_model(net, digits)  # fed [0, 1] images, it sees the wrong range
    for pre in (((0.5,), (0.25,)), Normalize((0.5,), (0.25,)), lambda x: (x - 0.5) / 0.25):
        run = open_model(net, digits, trigger=Patch(size=3), target=0, preprocess=pre)
        assert run.clean_accuracy == pytest.approx(digits_run.clean_accuracy)
        assert run.attack_success_rate == pytest.approx(digits_run.attack_success_rate)
    with pytest.raises(TypeError, match="`preprocess` must be None, a \\(mean, std\\) pair"):
        open_model(net, digits, preprocess=0.5)
    with pytest.raises(ValueError, match="std must hold values > 0"):
        open_model(net, digits, preprocess=((0.5,), (0.0,)))
    with pytest.raises(ValueError, match="1 or 1 values per statistic"):
        open_model(net, digits, preprocess=((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))


def test_data_none_only_for_backdoorbench(state_file):
    with pytest.raises(ValueError, match="`data` must be given"):
        open_model(state_file, None, architecture="small-cnn")


# --- in the panels and studies ------------------------------------------------------------------

def test_explorers_take_an_opened_run(digits, digits_run):
    from workbench.widgets import LandscapeExplorer, SmoothnessExplorer

    x8 = (digits.x_test.numpy() * 255).round().astype(np.uint8)
    run = open_model(digits_run.model, (x8, digits.y_test.numpy()),
                     trigger=lambda b: Patch(size=3)(b), target=0)
    panel = SmoothnessExplorer(run, run.data, n_inputs=4, n_samples=16, sigmas=[0.1, 0.3])
    assert panel.comparison.n_pairs == 4
    panel = LandscapeExplorer(run, run.data, resolution=3, n_samples=4, sigmas=[0.1, 0.3])
    assert panel.landscapes[0].predicted.shape == (3, 3)


def test_smoothing_analysis_takes_an_opened_run(digits, digits_run):
    """experiments.smoothing_analysis and atlas.noise_to_target checked isinstance(run,
    BackdoorRun) (TypeError before issue 21): an opened run gives the trained run's numbers."""
    run = open_model(digits_run.model, digits, trigger=Patch(size=3), target=0)
    got = smoothing_analysis(run, digits, n_pairs=4, n_samples=16)
    want = smoothing_analysis(digits_run, digits, n_pairs=4, n_samples=16)
    assert torch.equal(got.pairs.indices, want.pairs.indices)
    assert got.comparison.gap == want.comparison.gap
    assert atlas.noise_to_target(run, digits, [0.2], n=20) == \
        atlas.noise_to_target(digits_run, digits, [0.2], n=20)


def test_studies_refuse_an_opened_run_without_a_trigger_saying_why(digits, digits_run):
    run = open_model(digits_run.model, digits)
    for call in (lambda: smoothing_analysis(run, digits, n_pairs=4, n_samples=16),
                 lambda: atlas.noise_to_target(run, digits, [0.2], n=20)):
        with pytest.raises(ValueError, match="this model was opened without a trigger: "):
            call()
    with pytest.raises(TypeError, match="`run` must be a BackdoorRun .* or an OpenedRun"):
        smoothing_analysis(digits_run.model, digits)
    with pytest.raises(TypeError, match="`run` must be a BackdoorRun .* or an OpenedRun"):
        atlas.noise_to_target("run", digits, [0.2])


def test_ibd_psc_refuses_a_torchscript_model_naming_the_way_out(torchscript_file, digits):
    """check_batchnorm looked for nn.BatchNorm modules, which a ScriptModule's compiled
    submodules are not: it said "has none. Train model='small-cnn-bn'" even of a TorchScript model
    with BatchNorm layers. IBD-PSC changes the layers' weights in Python: it needs the module."""
    from workbench.studies.detection import check_batchnorm, compare_detectors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        bn = build_model("small-cnn-bn", 1, 10, (16, 16)).eval()
        scripted = torch.jit.trace(bn, digits.x_test[:2])
        run = open_model(torchscript_file, digits, trust_torchscript=True, device="cpu")
    assert check_batchnorm(bn) > 0
    for model in (scripted, run.model, Preprocessed(scripted, Normalize((0.5,), (0.5,)))):
        with pytest.raises(ValueError) as err:
            check_batchnorm(model)
        msg = str(err.value)
        assert "TorchScript" in msg and "IBD-PSC needs a Python module" in msg
        assert "open_model(" in msg and "architecture=" in msg
    x = digits.x_test[:4]
    with pytest.raises(ValueError, match="IBD-PSC needs a Python module"):
        compare_detectors(scripted, x, x, x, [0.1, 0.2], methods=("strip", "ibd-psc"))


# --- the panels on an opened run ----------------------------------------------------------------

def _trace_names(fig):
    return [t.name for t in fig.data if t.name]


def test_smoothness_explorer_without_a_trigger_shows_clean_curves(digits, digits_run):
    """SmoothnessExplorer needed triggered pairs (ValueError NO_TRIGGER before issue 21's panel
    change): without a trigger it shows the clean inputs' W_σ and says why the gap is missing."""
    from workbench.estimator.smoothness import estimate_smoothness as est
    from workbench.training.opened import NO_TRIGGER
    from workbench.widgets import SmoothnessExplorer

    run = open_model(digits_run.model, digits)
    panel = SmoothnessExplorer(run, run.data, n_inputs=4, n_samples=16, sigmas=[0.1, 0.2, 0.3])
    assert panel.clean_only and panel.comparison is None
    x, _, _ = run.clean_inputs(n=4, seed=0)
    want = est(run.model, x, panel.sigmas(), 16, seed=0)
    assert np.array_equal(panel.clean.counts, want.counts)
    assert not [n for n in _trace_names(panel.curves) if "triggered" in n]
    assert len(panel.distribution.data) == 1
    assert "clean inputs only" in panel.message.value and "gap" not in panel.message.value.lower()
    assert panel.note.layout.display != "none"
    assert html.unescape(panel.note.value).count(NO_TRIGGER) == 1
    panel.n_inputs.value = 5  # the controls still work
    assert panel.clean.entropy.shape[0] == 5
    # with a trigger: the paired view, no note
    paired = SmoothnessExplorer(open_model(digits_run.model, digits, trigger=Patch(size=3),
                                           target=0), digits, n_inputs=4, n_samples=16)
    assert not paired.clean_only and paired.comparison.n_pairs == 4
    assert paired.note.layout.display == "none"


def test_landscape_explorer_without_a_trigger_offers_random_and_gradient(digits, digits_run):
    from workbench.training.opened import NO_TRIGGER
    from workbench.widgets import LandscapeExplorer

    run = open_model(digits_run.model, digits)
    panel = LandscapeExplorer(run, run.data, resolution=3, n_samples=4, sigmas=[0.1, 0.3])
    assert panel.clean_only
    assert list(panel.dir1.options) == ["random", "gradient"] == list(panel.dir2.options)
    assert (panel.dir1.value, panel.dir2.value) == ("random", "gradient")
    assert len(panel.landscapes) == 1 and panel.landscapes[0].predicted.shape == (3, 3)
    assert "triggered twin" not in panel.landscapes[0].markers
    heat = [t for t in panel.plane.data if t.type == "heatmap"]
    assert len(heat) == 1  # one map: no triggered twin beside it
    assert not [n for n in _trace_names(panel.curve) if "triggered" in n]
    assert html.unescape(panel.note.value).count(NO_TRIGGER) == 1
    assert "predicted" in panel.message.value and "triggered" not in panel.message.value
    panel.index.value = 2
    panel.colour.value = "entropy"
    assert panel.landscapes[0].entropy is not None


def test_attack_panel_refuses_an_opened_run(digits, digits_run):
    """AttackPanel trains here: an opened run (as its data, as its trigger), its test-only data
    or its trigger are refused with what to do instead (before: AttributeError on run.name, or
    training on no images)."""
    from workbench.widgets import AttackPanel

    run = open_model(digits_run.model, digits, trigger=digits.x_test, target=0)
    for kw in ({"data": run}, {"data": digits, "trigger": run}):
        with pytest.raises(TypeError, match="AttackPanel trains models here.*open_model.*"
                                            "SmoothnessExplorer"):
            AttackPanel(**kw)
    x8 = (digits.x_test.numpy() * 255).round().astype(np.uint8)
    arrays = open_model(digits_run.model, (x8, digits.y_test.numpy()))
    with pytest.raises(ValueError, match="`data` must have a training split"):
        AttackPanel(arrays.data)
    with pytest.raises(ValueError, match="`trigger` must be a trigger AttackPanel can train"):
        AttackPanel(digits, trigger=run.trigger)  # a PairedTrigger: only its own test images
    with pytest.raises(ValueError, match="`trigger` must be a trigger AttackPanel can train"):
        AttackPanel(digits, trigger=FunctionTrigger(lambda b: Patch(size=3)(b)))
    with pytest.raises(TypeError, match="`trigger` must be None, a TriggerDesigner or a workbench"):
        AttackPanel(digits, trigger=lambda b: b)


def test_plain_functions_are_triggers_for_pairs_and_landscapes(digits, digits_run):
    """Issue 21: landscape_2d and triggered_pairs took only a workbench Trigger (TypeError); a
    function on image batches now gives the same pairs and map as the Trigger it computes."""
    import workbench as wb

    patch = Patch(size=3)

    def stamp(x):
        return patch(x)

    a = wb.triggered_pairs(digits.x_test, digits.y_test, stamp, 0, n=8, seed=1)
    b = wb.triggered_pairs(digits.x_test, digits.y_test, patch, 0, n=8, seed=1)
    assert torch.equal(a.triggered, b.triggered) and torch.equal(a.clean, b.clean)
    x = digits.x_test[1]
    m1 = landscape.landscape_2d(digits_run.model, x, trigger=stamp, resolution=5, sigma=0.2,
                                n_samples=16)
    m2 = landscape.landscape_2d(digits_run.model, x, trigger=patch, resolution=5, sigma=0.2,
                                n_samples=16)
    assert np.array_equal(m1.entropy, m2.entropy)
    with pytest.raises(TypeError, match="`trigger` must be a workbench.triggers.Trigger .* or a "
                                        "function"):
        wb.triggered_pairs(digits.x_test, digits.y_test, "patch", 0, n=8)


def test_training_refuses_triggers_that_cannot_name_a_run(digits):
    """Two different functions wrapped as triggers had the same run-cache key (their config only
    names the function): training with one could hand back the other's cached model."""
    import workbench as wb
    from workbench.triggers import FunctionTrigger

    for fn in (lambda x: x.clamp(0, 0.5), FunctionTrigger(lambda x: x.clamp(0, 0.4))):
        with pytest.raises(TypeError, match="cannot name a trained run"):
            wb.train_backdoor(digits, trigger=FunctionTrigger(fn) if callable(fn) and not
                              isinstance(fn, FunctionTrigger) else fn, rate=0.05, progress=False)

import hashlib
import io
import json
import pickle
import re
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.triggers import Patch
from helpers import write_idx


def test_digits_backdoor_meets_the_bar(digits_run):
    # the foundation issue's acceptance figures on the embedded dataset
    assert digits_run.clean_accuracy >= 0.95
    assert digits_run.attack_success_rate >= 0.95
    assert len(digits_run.history) == digits_run.config["epochs"]
    assert set(digits_run.history[0]) >= {"epoch", "loss", "clean_accuracy", "attack_success_rate"}
    assert digits_run.environment["torch"] == torch.__version__
    assert digits_run.trigger == Patch(size=3)


def test_cached_run_reopens_at_once(digits, digits_run, monkeypatch):
    # a load, not a retrain (load time vs training time: benchmarks/cache.py)
    monkeypatch.setattr(wb.train, "_train", lambda *a, **k: pytest.fail("retrained"))
    again = wb.train_backdoor(digits, trigger=Patch(size=3), rate=0.05, target=0, progress=False)
    assert again.path is not None and again.config == digits_run.config
    assert again.train_seconds == digits_run.train_seconds
    x = digits.x_test[:50]
    assert torch.equal(wb.predict(again.model, x), wb.predict(digits_run.model, x))


def test_seeded_training_is_reproducible(digits):
    kw = dict(trigger=Patch(size=2), rate=0.1, target=1, epochs=2, seed=3, max_train=300,
              cache=False, progress=False)
    a, b = wb.train_backdoor(digits, **kw), wb.train_backdoor(digits, **kw)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert a.poison_indices == b.poison_indices and len(a.poison_indices) == 30


def test_save_load_roundtrip_and_overwrite_guard(tmp_path, digits, digits_run):
    path = digits_run.save(tmp_path / "run")
    loaded = wb.load_run(path)
    assert loaded.clean_accuracy == digits_run.clean_accuracy
    assert loaded.history == digits_run.history
    x = digits.x_test[:64]
    assert torch.equal(wb.predict(loaded.model, x), wb.predict(digits_run.model, x))
    before = (path / "run.json").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        digits_run.save(path)
    assert (path / "run.json").read_bytes() == before  # nothing saved was touched


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {_Evil.marker}",))


def test_crafted_checkpoint_cannot_run_code(tmp_path, digits_run):
    path = digits_run.save(tmp_path / "run")
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    with open(path / "model.pt", "wb") as f:
        pickle.dump({"weight": _Evil()}, f)
    with pytest.raises(Exception):
        wb.load_run(path)
    assert not marker.exists()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(rate=1.5), ValueError, r"`rate` must be a float in \[0, 1\]; got 1.5"),
    (dict(target=10), ValueError, r"`target` must be an int in \[0, 9\]; got 10"),
    (dict(model="vgg"), ValueError, "`model` must be one of"),
    (dict(epochs=0), ValueError, "`epochs`"),
    (dict(trigger="patch"), TypeError, "`trigger`"),
    (dict(trigger=Patch(size=20)), ValueError, "`size` must fit"),
])
def test_bad_arguments_fail_before_training(digits, kwargs, exc, match, monkeypatch):
    monkeypatch.setattr(wb.train, "_train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(exc, match=match):
        wb.train_backdoor(digits, progress=False, cache=False, **kwargs)


def test_clean_model_has_low_asr(digits):
    run = wb.train_backdoor(digits, trigger=Patch(size=3), rate=0.0, target=0, progress=False)
    assert run.poison_indices == [] and run.clean_accuracy >= 0.95
    assert run.attack_success_rate < 0.2


# --- the run cache: the result of exactly what was asked ------------------------------------------

def _tiny(**kw):
    base = dict(trigger=Patch(size=2), rate=0.1, target=1, epochs=1, seed=5, max_train=200,
                progress=False)
    return {**base, **kw}


def test_cache_key_covers_the_data_content(tmp_path):
    # two folders holding `mnist` in torchvision's layout, with different images and labels
    write_idx(tmp_path / "a", "MNIST", n_train=60, n_test=20, seed=0)
    write_idx(tmp_path / "b", "MNIST", n_train=60, n_test=20, seed=1)
    a = wb.load_dataset("mnist", root=tmp_path / "a")
    b = wb.load_dataset("mnist", root=tmp_path / "b")
    ra = wb.train_backdoor(a, **_tiny(max_train=None))
    rb = wb.train_backdoor(b, **_tiny(max_train=None))
    assert ra.path != rb.path and ra.config["data_fingerprint"] != rb.config["data_fingerprint"]
    assert rb.config["data_fingerprint"] == b.fingerprint
    # the same content in another folder is the same experiment: one cached run
    write_idx(tmp_path / "c", "MNIST", n_train=60, n_test=20, seed=1)
    rc = wb.train_backdoor(wb.load_dataset("mnist", root=tmp_path / "c"), **_tiny(max_train=None))
    assert rc.path == rb.path


def test_cache_key_covers_truncation(digits):
    short = wb.load_dataset("digits", max_test=100)
    r1 = wb.train_backdoor(digits, **_tiny())
    r2 = wb.train_backdoor(short, **_tiny())
    assert r1.path != r2.path and r2.config["max_test"] == 100


def _cached(digits):
    run = wb.train_backdoor(digits, **_tiny())
    return run, Path(run.path)


def _edit_json(folder: Path, edit) -> None:
    meta = json.loads((folder / "run.json").read_text())
    edit(meta)
    (folder / "run.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, reason", [
    (lambda d: _edit_json(d, lambda m: m["config"].__setitem__("rate", 0.5)), "rate=0.5"),
    (lambda d: _edit_json(d, lambda m: m.__setitem__("clean_accuracy", "x")), "clean_accuracy"),
    (lambda d: _edit_json(d, lambda m: m.__setitem__("clean_accuracy", 1.5)), "clean_accuracy"),
    (lambda d: (d / "run.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "model.pt").write_bytes((d / "model.pt").read_bytes()[:100]), "checksum"),
    (lambda d: (d / "model.pt").unlink(), "model.pt missing"),
])
def test_a_damaged_cache_entry_is_reported_and_retrained(digits, damage, reason):
    run, folder = _cached(digits)
    damage(folder)
    assert not wb.is_cached(digits, **{k: v for k, v in _tiny().items() if k != "progress"})
    with pytest.warns(RuntimeWarning, match=re.escape(str(folder)) + ".*" + re.escape(reason)):
        again = wb.train_backdoor(digits, **_tiny())
    assert again.config["rate"] == 0.1 and again.clean_accuracy == run.clean_accuracy
    assert wb.is_cached(digits, **{k: v for k, v in _tiny().items() if k != "progress"})
    wb.load_run(folder)  # the entry was replaced by a good one


def _weights_like(state, fill):
    return {k: torch.full_like(v, fill) if v.is_floating_point() else v for k, v in state.items()}


def test_nan_or_foreign_weights_are_refused(tmp_path, digits, digits_run):
    path = digits_run.save(tmp_path / "run")
    state = torch.load(path / "model.pt", weights_only=True)
    # all-NaN weights with a matching checksum (as if saved so): refused for their values
    blob = io.BytesIO()
    torch.save(_weights_like(state, float("nan")), blob)
    (path / "model.pt").write_bytes(blob.getvalue())
    _edit_json(path, lambda m: m.__setitem__("weights_sha256",
                                             hashlib.sha256(blob.getvalue()).hexdigest()))
    with pytest.raises(ValueError, match=r"model\.pt: weight .* NaN or infinite"):
        wb.load_run(path)
    # another seed's weights copied in: the checksum recorded at save time no longer matches
    other = wb.train_backdoor(digits, **_tiny())
    (path / "model.pt").write_bytes((Path(other.path) / "model.pt").read_bytes())
    with pytest.raises(ValueError, match=r"model\.pt does not match the checksum"):
        wb.load_run(path)


def test_load_errors_name_the_file(tmp_path, digits_run):
    path = digits_run.save(tmp_path / "run")
    (path / "run.json").write_text("[1, 2")
    with pytest.raises(ValueError, match=re.escape(str(path / "run.json")) + " is not valid JSON"):
        wb.load_run(path)
    _ = digits_run.save(path, overwrite=True)
    _edit_json(path, lambda m: m.pop("history"))
    with pytest.raises(ValueError, match=re.escape(str(path / "run.json")) + " lacks history"):
        wb.load_run(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        wb.load_run(tmp_path / "nothing")


def test_training_refuses_non_finite_data_and_arguments(digits):
    bad = wb.data.Dataset("digits", digits.x_train.clone(), digits.y_train, digits.x_test,
                          digits.y_test, digits.classes, dict(digits.info))
    bad.x_train[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"`data.x_train` must hold finite values"):
        wb.train_backdoor(bad, cache=False, progress=False)
    for kw, match in ((dict(lr=float("inf")), "`lr`"), (dict(seed=2**64), "`seed` must be an int in"),
                      (dict(callbacks=print), "`callbacks` must be a list"),
                      (dict(device="nonsense"), "`device` must be a device of this machine"),
                      (dict(device="cuda:7"), "`device` must be a device of this machine")):
        with pytest.raises((ValueError, TypeError), match=match):
            wb.train_backdoor(digits, cache=False, progress=False, **kw)


def test_numpy_integers_are_accepted(digits):
    import numpy as np

    run = wb.train_backdoor(digits, **_tiny(seed=np.int64(5), target=np.int32(1)))
    assert run.config["seed"] == 5 and isinstance(run.config["seed"], int)


def test_runs_saved_before_checksums_load_with_a_warning(tmp_path, digits_run):
    path = digits_run.save(tmp_path / "old")
    _edit_json(path, lambda m: m.pop("weights_sha256"))
    with pytest.warns(UserWarning, match="without a weights checksum"):
        run = wb.load_run(path)
    assert run.config == digits_run.config

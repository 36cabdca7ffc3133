"""Poisoning modes (dirty-label, clean-label, label-consistent) and target modes (all-to-one,
all-to-all) of `train_backdoor` and `poison_dataset` (the attack atlas, workbench.poison)."""

import hashlib
import json
from dataclasses import asdict

import pytest
import torch

import workbench as wb
from workbench import poison, train
from workbench.triggers import Patch, Sinusoid

PATCH = Patch(size=3)


class HalfPatch(Patch):
    """A test trigger with the Adaptive-Blend hooks: conservatism, and a training form drawn per
    image from the poisoning generator (each image gets the patch with probability 1/2)."""

    conservatism = 0.25

    def poison_apply(self, images, seed=0):
        keep = torch.rand(len(images), generator=seed) < 0.5
        out = images.clone()
        out[keep] = self(images[keep])
        return out


def _untouched(n, idx):
    m = torch.ones(n, dtype=torch.bool)
    m[idx] = False
    return m


# --- what each mode poisons -----------------------------------------------------------------------

def test_clean_label_triggers_target_class_images_and_keeps_labels(digits):
    x, y = digits.x_train, digits.y_train
    p = wb.poison_dataset(x, y, PATCH, rate=0.05, target=3, seed=1, poisoning="clean-label")
    assert len(p.poison_indices) == round(0.05 * len(y))
    assert (y[p.poison_indices] == 3).all()  # target-class images only
    assert torch.equal(p.y, y)  # no label changes anywhere
    assert torch.equal(p.x[p.poison_indices], PATCH(x[p.poison_indices]))
    rest = _untouched(len(y), p.poison_indices)
    assert torch.equal(p.x[rest], x[rest])
    assert p.poisoning == "clean-label" and len(p.cover_indices) == 0
    again = wb.poison_dataset(x, y, PATCH, 0.05, 3, seed=1, poisoning="clean-label")
    other = wb.poison_dataset(x, y, PATCH, 0.05, 3, seed=2, poisoning="clean-label")
    assert torch.equal(again.poison_indices, p.poison_indices) and torch.equal(again.x, p.x)
    assert not torch.equal(other.poison_indices, p.poison_indices)
    # the whole target class at most: rate is a fraction of the whole training set
    n3 = int((y == 3).sum())
    full = wb.poison_dataset(x, y, PATCH, n3 / len(y), 3, poisoning="clean-label")
    assert sorted(full.poison_indices.tolist()) == torch.nonzero(y == 3).flatten().tolist()
    with pytest.raises(ValueError, match=rf"`rate` must be at most {int(n3 / len(y) * 1e4) / 1e4}"):
        wb.poison_dataset(x, y, PATCH, (n3 + 1) / len(y), 3, poisoning="clean-label")


def test_all_to_all_relabels_every_class_to_the_next(digits):
    x, y = digits.x_train, digits.y_train
    p = wb.poison_dataset(x, y, PATCH, rate=0.2, target=None, seed=0, target_mode="all-to-all",
                          num_classes=10)
    idx = p.poison_indices
    assert len(idx) == round(0.2 * len(y)) and p.target is None
    assert set(y[idx].tolist()) == set(range(10))  # every class is poisoned, the target's too
    assert torch.equal(p.y[idx], (y[idx] + 1) % 10)  # 9 -> 0
    assert (p.y[idx][y[idx] == 9] == 0).all()
    rest = _untouched(len(y), idx)
    assert torch.equal(p.y[rest], y[rest]) and torch.equal(p.x[rest], x[rest])
    assert torch.equal(p.x[idx], PATCH(x[idx]))
    with pytest.raises(ValueError, match="`num_classes` must be given"):
        wb.poison_dataset(x, y, PATCH, 0.2, None, target_mode="all-to-all")
    with pytest.raises(ValueError, match="`target` must be None"):
        wb.poison_dataset(x, y, PATCH, 0.2, 0, target_mode="all-to-all", num_classes=10)


def test_a_triggers_conservatism_and_training_form_are_used(digits):
    x, y = digits.x_train, digits.y_train
    p = wb.poison_dataset(x, y, HalfPatch(size=3), rate=0.1, target=0, seed=4)
    n = round(0.1 * len(y))
    assert len(p.poison_indices) == n and len(p.cover_indices) == round(0.25 * n)
    assert set(p.cover_indices.tolist()) <= set(p.poison_indices.tolist())
    cover = p.cover_indices
    payload = torch.tensor(sorted(set(p.poison_indices.tolist()) - set(cover.tolist())))
    assert torch.equal(p.y[cover], y[cover]) and (p.y[payload] == 0).all()
    # per image: patched or left as it was, both happen (drawn from the poisoning stream)
    stamped = (p.x[p.poison_indices] == PATCH(x[p.poison_indices])).flatten(1).all(1)
    same = (p.x[p.poison_indices] == x[p.poison_indices]).flatten(1).all(1)
    assert bool((stamped | same).all()) and 0.3 < stamped.float().mean() < 0.7
    again = wb.poison_dataset(x, y, HalfPatch(size=3), 0.1, 0, seed=4)
    assert torch.equal(again.x, p.x) and torch.equal(again.cover_indices, cover)
    other = wb.poison_dataset(x, y, HalfPatch(size=3), 0.1, 0, seed=5)
    assert not torch.equal(other.x, p.x)
    # in the clean-label modes every triggered image keeps its label anyway: no covers
    cl = wb.poison_dataset(x, y, HalfPatch(size=3), 0.05, 0, seed=4, poisoning="clean-label")
    assert len(cl.cover_indices) == 0 and torch.equal(cl.y, y)


def test_adaptive_blend_poisons_with_covers_and_its_own_piece_subsets(digits):
    """Qi et al. 2023's Adaptive-Blend through poison_dataset: half the triggered images are
    covers (true label), each poisoned image shows its own subset of 8 of the 16 pieces."""
    trig = wb.triggers.AdaptiveBlend()  # conservatism 0.5, 16 pieces, mask rate 0.5
    x, y = digits.x_train, digits.y_train
    p = wb.poison_dataset(x, y, trig, rate=0.1, target=0, seed=0)
    n = round(0.1 * len(y))
    assert len(p.poison_indices) == n and len(p.cover_indices) == round(0.5 * n)
    cover = p.cover_indices
    assert torch.equal(p.y[cover], y[cover]) and (y[cover] != 0).all()
    assert int((p.y[p.poison_indices] == 0).sum()) == n - len(cover)
    # which pieces each poisoned image got: pixels changed, read piece by piece
    changed = (p.x[p.poison_indices] != x[p.poison_indices])[:, 0]  # (P, H, W)
    pmap = trig.piece_map(*x.shape[2:])
    per_piece = torch.stack([changed[:, pmap == k].float().mean(1) for k in range(16)], 1)
    assert bool(((per_piece == 0) | (per_piece == 1)).all())  # a piece is applied whole or not
    assert bool((per_piece.sum(1) == 8).all())  # 8 of 16 pieces per image
    assert len({tuple(r.tolist()) for r in per_piece}) > n // 2  # subsets differ between images
    again = wb.poison_dataset(x, y, trig, rate=0.1, target=0, seed=0)
    assert torch.equal(again.x, p.x) and torch.equal(again.cover_indices, cover)


# --- label-consistent: PGD on a clean model -------------------------------------------------------

LC = dict(trigger=PATCH, rate=0.08, target=0, epochs=8, seed=0, progress=False,
          poisoning="label-consistent", epsilon=0.2)


@pytest.fixture(scope="module")
def surrogate(digits):
    """The clean model label-consistent runs of LC craft on (cached)."""
    return wb.train_backdoor(digits, trigger=PATCH, rate=0.0, target=0, epochs=8, seed=0,
                             progress=False)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_pgd_stays_in_the_ball_fools_the_clean_model_and_leaves_it_unchanged(digits, surrogate):
    model = surrogate.model
    x, y = digits.x_train[digits.y_train == 0][:32], digits.y_train[digits.y_train == 0][:32]
    before, flags = _state(model), [p.requires_grad for p in model.parameters()]
    model.train()  # a caller's mode must come back too
    adv = poison.adversarial_perturbation(model, x, y, epsilon=0.1, steps=10, seed=3)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.eval()
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert not torch.equal(adv, x)
    acc_clean = float((wb.predict(model, x) == y).float().mean())
    acc_adv = float((wb.predict(model, adv) == y).float().mean())
    assert acc_clean >= 0.9 and acc_adv <= acc_clean - 0.5, (acc_clean, acc_adv)
    again = poison.adversarial_perturbation(model, x, y, epsilon=0.1, steps=10, seed=3)
    other = poison.adversarial_perturbation(model, x[:4], y[:4], epsilon=0.1, steps=10, seed=4)
    assert torch.equal(again, adv) and not torch.equal(other, adv[:4])


def test_label_consistent_poisoning_perturbs_then_triggers(digits, surrogate):
    x, y = digits.x_train, digits.y_train
    kw = dict(poisoning="label-consistent", model=surrogate.model, epsilon=0.1, pgd_steps=5)
    p = wb.poison_dataset(x, y, PATCH, 0.08, 0, seed=0, **kw)
    idx = p.poison_indices
    assert len(idx) == round(0.08 * len(y)) and (y[idx] == 0).all() and torch.equal(p.y, y)
    patch_area = PATCH(torch.zeros_like(x[:1])) != 0  # where the patch writes (value 1)
    diff = (p.x[idx] - x[idx]).abs()
    assert diff[:, ~patch_area[0]].max() <= 0.1 + 1e-6  # within epsilon outside the patch
    assert torch.equal(p.x[idx][:, patch_area[0]], PATCH(x[idx])[:, patch_area[0]])
    assert not torch.equal(p.x[idx], PATCH(x[idx]))  # perturbed, not only stamped
    assert torch.equal(wb.poison_dataset(x, y, PATCH, 0.08, 0, seed=0, **kw).x, p.x)
    with pytest.raises(TypeError, match="`model` must be the clean"):
        wb.poison_dataset(x, y, PATCH, 0.08, 0, poisoning="label-consistent")


# --- all-to-all ASR against an independent computation ----------------------------------------

@pytest.fixture(scope="module")
def all_to_all(digits):
    return wb.train_backdoor(digits, trigger=PATCH, rate=0.3, target=0, epochs=10, seed=0,
                             target_mode="all-to-all", progress=False)


def test_all_to_all_asr_is_every_input_sent_to_its_own_next_class(digits, all_to_all):
    run = all_to_all
    x, y = digits.x_test, digits.y_test
    with torch.no_grad():  # by hand: every test input, triggered, against (y + 1) mod 10
        stamped = x.clone()
        stamped[:, :, -4:-1, -4:-1] = 1.0  # Patch(size=3): bottom-right, margin 1, value 1
        pred = run.model(stamped).argmax(1)
    want = sum(int(p) == (int(t) + 1) % 10 for p, t in zip(pred, y)) / len(y)
    # (the workbench averages in float32, as for all-to-one ASR: equal to 1e-6)
    assert run.attack_success_rate == pytest.approx(want, abs=1e-6)
    assert run.measure_asr(x, y) == pytest.approx(want, abs=1e-6)
    assert run.history[-1]["attack_success_rate"] == run.attack_success_rate
    # the all-to-one figure on the same model is another number: no silent mix-up
    one = wb.attack_success_rate(run.model, x, y, PATCH, 1)
    assert one == pytest.approx(float((pred[y != 1] == 1).float().mean()))
    with pytest.raises(ValueError, match="no single `target`"):
        run.target
    pairs = run.triggered_pairs(x, y)
    assert len(pairs.clean) == len(y) and torch.equal(pairs.targets, (y + 1) % 10)
    assert torch.equal(run.target_labels(y), (y + 1) % 10)
    with pytest.raises(ValueError, match="`target` must be None"):
        wb.attack_success_rate(run.model, x, y, PATCH, 0, target_mode="all-to-all")
    assert "all-to-all" in repr(run)


# --- the cache: keys, records, round trips --------------------------------------------------------

def _old_key(cfg: train.TrainConfig) -> str:
    """The key as computed before the poisoning settings existed."""
    d = {k: v for k, v in asdict(cfg).items() if k not in train.KEY_DEFAULTS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()[:16]


def test_cache_keys_cover_the_modes_and_keep_the_old_keys(digits):
    def key(**kw):
        return train.prepare_run(digits, PATCH, kw.pop("rate", 0.05), 0, "small-cnn", 2, 0, None,
                              None, 0.0, None, **kw)[2]

    base = key()
    assert base.key() == _old_key(base)  # runs cached before the atlas keep their entries
    variants = [key(poisoning="clean-label"), key(poisoning="label-consistent"),
                key(poisoning="label-consistent", epsilon=0.2),
                key(poisoning="label-consistent", pgd_steps=5),
                key(poisoning="label-consistent", pgd_step_size=0.01),
                key(target_mode="all-to-all")]
    keys = {c.key() for c in [base] + variants}
    assert len(keys) == 1 + len(variants)
    lc = variants[1]
    assert (lc.epsilon, lc.pgd_steps) == (poison.DEFAULT_EPSILON, poison.DEFAULT_PGD_STEPS)
    assert lc.pgd_step_size == pytest.approx(2.5 * lc.epsilon / lc.pgd_steps)
    # an explicit default is the same experiment as the implicit one
    assert key(poisoning="label-consistent", epsilon=16 / 255, pgd_steps=20).key() == lc.key()


def test_label_consistent_run_round_trips_through_the_cache(digits, surrogate, monkeypatch,
                                                            tmp_path):
    run = wb.train_backdoor(digits, **LC)
    c = run.config
    assert (c["poisoning"], c["target_mode"], c["epsilon"]) == ("label-consistent", "all-to-one",
                                                                0.2)
    assert c["pgd_steps"] == 20 and c["pgd_step_size"] == pytest.approx(0.025)
    digits_y = digits.y_train
    assert len(run.poison_indices) == round(0.08 * len(digits_y))
    assert (digits_y[run.poison_indices] == 0).all()
    monkeypatch.setattr(train, "_train", lambda *a, **k: pytest.fail("retrained"))
    again = wb.train_backdoor(digits, **LC)
    assert again.config == run.config and again.path == run.path
    ask = {k: v for k, v in LC.items() if k != "progress"}
    assert wb.is_cached(digits, **ask)
    assert not wb.is_cached(digits, **{**ask, "epsilon": 0.15})
    assert not wb.is_cached(digits, **{**ask, "pgd_steps": 10})
    loaded = wb.load_run(run.save(tmp_path / "lc"))
    assert loaded.config == run.config and loaded.poisoning == "label-consistent"
    # a run.json whose settings were edited into nonsense is refused, naming the file
    meta = json.loads((tmp_path / "lc" / "run.json").read_text())
    meta["config"]["epsilon"] = None
    (tmp_path / "lc" / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="run.json.*`config.epsilon`"):
        wb.load_run(tmp_path / "lc")


def test_runs_saved_before_the_modes_load_as_dirty_label_all_to_one(digits_run, tmp_path):
    path = digits_run.save(tmp_path / "old")
    meta = json.loads((path / "run.json").read_text())
    for k in train.KEY_DEFAULTS:
        meta["config"].pop(k)
    meta.pop("cover_indices")
    (path / "run.json").write_text(json.dumps(meta))
    run = wb.load_run(path)
    assert run.poisoning == "dirty-label" and run.target_mode == "all-to-one"
    assert run.config == digits_run.config and run.cover_indices == []


# --- a small training learns each mode ------------------------------------------------------------

def test_small_trainings_learn_each_mode(digits, all_to_all, surrogate):
    """Each mode's backdoor is learnt (ASR far above what the trigger does to the clean model),
    at settings measured on digits (benchmarks/RESULTS.md, "Attack atlas: poisoning modes")."""
    baseline = surrogate.clean_accuracy
    patch5 = Patch(size=5)
    # clean-label is learnt first and then unlearnt as the target class's own content is: a
    # 5x5 patch on 121 of the 133 zeros sends 97% of inputs to class 0 at epoch 2, 24% at epoch 8
    cl = wb.train_backdoor(digits, trigger=patch5, rate=0.09, target=0, epochs=3, seed=0,
                           poisoning="clean-label", progress=False)
    lc = wb.train_backdoor(digits, **LC)
    x, y = digits.x_test, digits.y_test
    chance5 = wb.attack_success_rate(surrogate.model, x, y, patch5, 0)
    chance3 = wb.attack_success_rate(surrogate.model, x, y, PATCH, 0)
    assert max(h["attack_success_rate"] for h in cl.history) >= 0.8
    assert cl.attack_success_rate >= 0.5 and cl.attack_success_rate >= chance5 + 0.4
    assert lc.attack_success_rate >= 0.4 and lc.attack_success_rate >= chance3 + 0.35
    assert all_to_all.attack_success_rate >= 0.7  # chance: about 1 in 10
    for run in (lc, all_to_all):
        assert run.clean_accuracy >= baseline - 0.05, (run, baseline)
    # against the clean model after as many epochs (it misses more clean zeros: they lack the patch)
    assert cl.clean_accuracy >= surrogate.history[2]["clean_accuracy"] - 0.08

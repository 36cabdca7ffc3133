import pytest
import torch

import workbench as wb
from workbench.patterns import measure_patterns, random_patches, universal_patch
from workbench.triggers import PatternPatch, trigger_from_config


def test_pattern_patch_roundtrip_and_stamp():
    pat = torch.rand(1, 3, 3)
    t = PatternPatch(pat, position=(1, 2), margin=0)
    y = t(torch.zeros(2, 1, 8, 8))
    assert torch.allclose(y[0, 0, 1:4, 2:5], pat[0])
    assert trigger_from_config(t.to_config()) == t


def test_universal_patch_beats_random_controls(digits):
    clean = wb.train_backdoor(digits, trigger=wb.triggers.Patch(size=3), rate=0.0, target=0,
                              progress=False)
    uap = universal_patch(clean.model, digits.x_train, digits.y_train, target=0, size=4,
                          position="center", steps=200, seed=0)
    assert isinstance(uap, PatternPatch) and uap.pattern.shape == (1, 4, 4)
    pats = {"universal": uap, **{f"random {i}": p for i, p in enumerate(random_patches(2, 4, position="center", seed=1))}}
    ms = measure_patterns(clean.model, digits.x_test, digits.y_test, 0, pats, [0.1, 0.3, 0.5],
                          n_pairs=20, n_samples=16)
    rates = {m.name: m.success_rate for m in ms}
    assert rates["universal"] > max(rates["random 0"], rates["random 1"])
    # each measurement against an independent computation on the same pairs and seed
    for m in ms:
        keep = digits.y_test != 0
        sent = (wb.predict(clean.model, m.trigger(digits.x_test[keep])) == 0).float().mean()
        assert m.success_rate == pytest.approx(float(sent))
        pairs = wb.triggered_pairs(digits.x_test, digits.y_test, m.trigger, 0, n=20, seed=0)
        c = wb.estimate_smoothness(clean.model, pairs.clean, [0.1, 0.3, 0.5], 16, seed=0)
        t = wb.estimate_smoothness(clean.model, pairs.triggered, [0.1, 0.3, 0.5], 16, seed=0)
        assert m.comparison.gap == pytest.approx(float((c.mean_entropy() - t.mean_entropy()).mean()))
    # the caller's clean model is left as it was: eval mode, trainable parameters
    assert all(p.requires_grad for p in clean.model.parameters())


def test_pattern_size_study_checks_sizes_first():
    from workbench.paper import pattern_size_study

    with pytest.raises(ValueError, match=r"`sizes` must be an int in \[1, 14\]"):
        pattern_size_study("digits", sizes=(4, 15))
    with pytest.raises(ValueError, match="`dataset` must be one of"):
        pattern_size_study("imagenet")

"""The attack atlas (workbench.atlas): attacks as a sweep axis, the trigger's size, the curves.

One tiny sweep over every attack (2 epochs, 10 pairs × 8 samples; about 30 s from an empty run
cache on 2 cores) is shared by the tests; its runs are reused through the run cache."""

import csv
import math

import numpy as np
import torch
import pytest

import workbench as wb
from workbench import atlas, sweepstore
from workbench import sweep as sw

TINY = dict(attacks=tuple(atlas.ATTACKS), rates="strong", epochs=2, n_pairs=10, n_samples=8)


@pytest.fixture(scope="module")
def tiny_atlas(tmp_path_factory):
    path = tmp_path_factory.mktemp("atlas") / "atlas.csv"
    return sw.run_sweep(sw.SweepGrid(**TINY), path, max_workers=1, progress=False), path


def test_every_attack_has_a_family_a_paper_and_two_rates_per_dataset():
    assert len(atlas.ATTACKS) == 15
    for a in atlas.ATTACKS.values():
        assert a.family in atlas.FAMILIES and a.paper
        for d in atlas.ATLAS_DATASETS:
            weak, strong = atlas.attack_rates(a.name, d)
            assert 0 < weak < strong <= 1, (a.name, d)
    # every poisoning and target mode of train_backdoor is in the atlas
    assert {a.poisoning for a in atlas.ATTACKS.values()} == {"dirty-label", "clean-label",
                                                             "label-consistent"}
    assert {a.target_mode for a in atlas.ATTACKS.values()} == {"all-to-one", "all-to-all"}
    # every trigger class of the workbench but PatternPatch (a user's array) is an attack
    kinds = {a.kind for a in atlas.ATTACKS.values()}
    assert set(wb.triggers.TRIGGERS) - {"PatternPatch"} <= kinds and "InputAware" in kinds


def test_the_atlas_grid_is_every_attack_at_two_rates_and_two_seeds():
    pts = atlas.atlas_grid(datasets=("digits",)).points()
    assert len(pts) == 15 * 2 * 2  # points() drops repeated keys: a key collision loses points
    by = {(p["attack"], p["rate"], p["seed"]) for p in pts}
    for a in atlas.ATTACKS.values():
        for rate in a.rates["digits"]:
            assert {(a.name, rate, 0), (a.name, rate, 1)} <= by
    lc = next(p for p in pts if p["attack"] == "Patch/label-consistent")
    assert lc["poisoning"] == "label-consistent" and lc["epsilon"] == 0.3
    # PGD's settings with their defaults resolved: a changed default is another point
    assert lc["pgd_steps"] == wb.poison.DEFAULT_PGD_STEPS and lc["pgd_step_size"] > 0
    troj = next(p for p in pts if p["attack"] == "TrojanNN")
    assert troj["trigger"]["steps"] == 1000 and troj["trigger"]["neurons"] == 2
    assert troj["versions"]["craft"] == wb.crafting.CRAFT_VERSION
    a2a = next(p for p in pts if p["attack"] == "Patch/all-to-all")
    assert a2a["target_mode"] == "all-to-all"
    ia = next(p for p in pts if p["attack"] == "InputAware")
    assert ia["trigger"]["cross_rate"] == ia["rate"] and ia["epochs"] == 60
    # the key covers the attack: a 3x3 patch dirty-label and all-to-all (same trigger, rates and
    # seeds would collide otherwise) are 8 points, not 4
    same = [p for p in pts if p["trigger"] == pts[0]["trigger"]]
    assert {p["attack"] for p in same} == {"Patch", "Patch/all-to-all"} and len(same) == 8


def test_fashion_mnist_atlas_trains_on_its_first_20000_images():
    p = atlas.atlas_grid(datasets=("fashion-mnist",), attacks=("Patch",), seeds=(0,)).points()
    assert [q["max_train"] for q in p] == [20_000, 20_000]


def test_tiny_atlas_measures_every_attack(tiny_atlas, digits):
    table, _ = tiny_atlas
    assert sorted(table["attack"]) == sorted(atlas.ATTACKS) and len(table) == 15
    assert (table["row_format"] == sw.ROW_FORMAT).all()
    assert table["max_train"].isna().all()  # digits' atlas trains on the whole training set
    log_k = math.log(digits.num_classes)
    for r in table.to_dict("records"):
        a = atlas.ATTACKS[r["attack"]]
        assert (r["family"], r["poisoning"], r["target_mode"]) == (a.family, a.poisoning,
                                                                   a.target_mode)
        assert r["rate"] == a.rates["digits"][1]
        assert 0 <= r["attack_success_rate"] <= 1 and 0 < r["clean_accuracy"] <= 1
        assert r["gap_ci_low"] <= r["gap"] <= r["gap_ci_high"]
        assert r["trigger_l2"] > 0 and 0 < r["trigger_linf"] <= 1 + 1e-6, r["attack"]
        assert r["trigger_linf"] <= r["trigger_l2"] + 1e-9
        assert len(r["sigmas"]) == len(r["clean_curve"]) == len(r["triggered_curve"]) >= 2
        assert all(0 <= w <= log_k + 1e-9 for w in r["clean_curve"] + r["triggered_curve"])
        # the row's mean-W summaries are the curves' trapezoid means (one estimate, two views)
        s = np.array(r["sigmas"])
        for curve, mean in ((r["clean_curve"], r["clean_mean_W"]),
                            (r["triggered_curve"], r["triggered_mean_W"])):
            area = np.sum((np.array(curve[1:]) + np.array(curve[:-1])) / 2 * np.diff(s))
            assert area / (s[-1] - s[0]) == pytest.approx(mean, abs=1e-9)
    # all-to-all pairs come from every class, so its triggered inputs include target 0's class:
    # the row was measured (it used to raise: run.target has no value in that mode)
    assert table.set_index("attack").loc["Patch/all-to-all", "n_pairs"] == 10


def test_trigger_norms_against_a_direct_computation(digits):
    x = digits.x_test
    l2, linf = atlas.trigger_norms(wb.triggers.Pixel(), x, batch_size=7)
    # a white pixel at (H-2, W-2): the change is 1 - x there, nothing elsewhere
    d = (1.0 - x[:, 0, -2, -2]).double()
    assert l2 == pytest.approx(float(d.mean()), rel=1e-12)
    assert linf == pytest.approx(float(d.mean()), rel=1e-12)
    blend = wb.triggers.Blend(alpha=0.1)
    diff = (blend(x) - x).flatten(1).double()
    l2, linf = atlas.trigger_norms(blend, x)
    assert l2 == pytest.approx(float(diff.norm(dim=1).mean()), rel=1e-9)
    assert linf == pytest.approx(float(diff.abs().max(dim=1).values.mean()), rel=1e-9)


def test_a_rerun_reads_every_row_and_train_attack_gives_the_sweeps_runs(tiny_atlas, digits):
    table, path = tiny_atlas
    again = sw.run_sweep(sw.SweepGrid(**TINY), path, max_workers=1, progress=False)
    assert len(again.attrs["computed"]) == 0 and sorted(again["key"]) == sorted(table["key"])
    rows = table.set_index("attack")
    for name in ("TrojanNN", "Patch/all-to-all", "InputAware"):  # crafted, a mode, generator
        run = atlas.train_attack(digits, name, seed=0, epochs=2)
        assert run.clean_accuracy == rows.loc[name, "clean_accuracy"], name
        assert run.attack_success_rate == rows.loc[name, "attack_success_rate"], name


def test_format_3_tables_are_read_with_empty_atlas_columns(tmp_path, tiny_atlas):
    _, src = tiny_atlas
    lines = src.read_bytes().splitlines(keepends=True)
    out = []
    for ln in lines[:3]:
        fields = dict(zip(sw.COLUMNS, next(csv.reader([ln.decode()]))))
        if ln is not lines[0]:
            fields["row_format"] = "3"
        out.append(sweepstore._csv_record([fields[c] for c in sweepstore.FORMAT3_COLUMNS]))
    old = tmp_path / "old.csv"
    old.write_bytes(b"".join(out))
    read = sw.read_table(old)
    assert len(read) == 2 and (read["row_format"] == 3).all()
    assert (read["attack"] == "").all() and read["trigger_l2"].isna().all()
    assert all(v == () for v in read["clean_curve"])
    assert sw.current_rows(read)[1] == 2  # read, never mixed into a result


@pytest.mark.parametrize("kwargs, match", [
    (dict(attacks=("Nope",)), r"`attacks` must be one of 'Patch'"),
    (dict(attacks=("Patch/clean-label",), rates=(0.2,)),
     r"Patch/clean-label on 'digits' at rate 0.2.*at most 0.0987 for poisoning='clean-label'"),
    (dict(attacks=("InputAware",), rates=(0.0,)), r"InputAware on 'digits' at rate 0.0.*`rate`"),
    (dict(attacks=("Patch/all-to-all",), targets=(3,)), r"`target` must be 0"),
    (dict(attacks=("Patch",), datasets=("mnist",), rates=None),
     r"rates were measured on \('digits', 'fashion-mnist'\) only"),
    (dict(attacks=("Patch",), rates="medium"), r"`rates` must be a tuple .* 'weak' or 'strong'"),
    (dict(attacks=("Patch",), trigger_sizes=(5,)), r"`trigger_sizes` does not apply with `attacks`"),
])
def test_bad_atlas_grids_are_refused_before_any_run(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sw.SweepGrid(**kwargs)


def test_rates_without_attacks_must_be_a_tuple():
    for rates in ("strong", None):
        with pytest.raises(TypeError, match=r"None, 'weak' and 'strong' need `attacks`"):
            sw.SweepGrid(rates=rates)


def test_train_attack_refuses_bad_input_before_training(digits):
    with pytest.raises(ValueError, match="`attack` must be one of"):
        atlas.train_attack(digits, "BadNet")
    with pytest.raises(ValueError, match="at most 0.0987 for poisoning='clean-label'"):
        atlas.train_attack(digits, "Patch/clean-label", rate=0.5)
    with pytest.raises(ValueError, match="`rate` must be"):
        atlas.train_attack(digits, "TrojanNN", rate=1.5)
    with pytest.raises(ValueError, match="has no trigger before training"):
        atlas.attack_trigger("InputAware", digits)


def test_cli_atlas_options_are_checked(capsys):
    from workbench import cli

    for args, message in ((["--attacks", "Patch"], "`--attacks` needs --atlas"),
                          (["--atlas", "--sizes", "3"], "do not apply with --atlas"),
                          (["--atlas", "--attacks", "Nope", "--datasets", "digits"],
                           "`attacks` must be one of")):
        assert cli.main(["sweep", *args]) == 2
        assert message in capsys.readouterr().err


class _Constant(torch.nn.Module):
    """A model that ignores its input and always answers `label`."""

    def __init__(self, label: int, k: int = 10):
        super().__init__()
        self.label, self.k = label, k

    def forward(self, x):
        out = torch.zeros(len(x), self.k)
        out[:, self.label] = 1.0
        return out


def test_noise_to_target_on_known_answers_and_a_direct_computation(digits, digits_run):
    import dataclasses

    always_target = dataclasses.replace(digits_run, model=_Constant(0))
    never = dataclasses.replace(digits_run, model=_Constant(3))
    assert set(atlas.noise_to_target(always_target, digits, [0.1, 0.5]).values()) == {1.0}
    # a model that never answers the target: no noisy input reaches it
    assert set(atlas.noise_to_target(never, digits, [0.1, 0.5]).values()) == {0.0}
    got = atlas.noise_to_target(digits_run, digits, [0.2, 0.6], n=50, seed=3)
    pairs = digits_run.triggered_pairs(digits.x_test, digits.y_test, n=50, seed=3)
    g = torch.Generator().manual_seed(3)
    was_training = digits_run.model.training
    with torch.no_grad():
        for s in (0.2, 0.6):
            x = pairs.clean + s * torch.randn(pairs.clean.shape, generator=g)
            want = float((digits_run.model.eval()(x).argmax(1) == 0).float().mean())
            assert got[s] == pytest.approx(want, abs=1e-12)
    digits_run.model.train(was_training)
    with pytest.raises(ValueError, match="`sigmas`"):
        atlas.noise_to_target(digits_run, digits, [-0.1])


def test_the_registry_is_read_only():
    """Issue 19: the registry's dicts were mutable: a caller's change to one attack's trigger or
    rates would move every later run's settings and keys without a word."""
    a = atlas.ATTACKS["Patch"]
    with pytest.raises(TypeError):
        a.trigger["size"] = 5
    with pytest.raises(TypeError):
        a.rates["digits"] = (0.1, 0.2)
    with pytest.raises(TypeError):
        atlas.ATTACKS["Mine"] = a
    with pytest.raises(TypeError):
        atlas.ATTACKS["FTrojan"].trigger_by_dataset["digits"]["magnitude"] = 1.0
    assert a.trigger_config("digits") == {"type": "Patch", "size": 3}  # a plain dict to change

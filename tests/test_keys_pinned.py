"""The keys users' files are found by, pinned (issue 19: nothing moves for users).

A sweep row is reused, and a trained run loaded from the run cache, only when its key matches: a
refactoring that moved a key would silently recompute every row of reports/*.csv and retrain
every cached run. The literal keys below were computed on 4db2e5a (before the sweep store moved
to SQLite and the sweep's training path became the atlas's) and checked equal at fa6d55a; the
run-cache keys are read where the run cache is entered (nothing is trained).

A version bump (ESTIMATOR_VERSION, KEY_FORMAT, CACHE_FORMAT, CRAFT_VERSION, the workbench's
version) moves every key on purpose: `test_the_versions_the_pins_were_made_with` then fails
first; update PINNED_VERSIONS and the keys together, deliberately."""

import pytest

import workbench as wb
from workbench import atlas, runstore
from workbench import sweep as sw

PINNED_VERSIONS = {"craft": 1, "estimator": 5, "row_format": 4, "train_cache": 3,
                   "workbench": "0.1.0"}

# SweepGrid() (digits, Patch of sides 2 and 3, rates 0 ... 0.1): the keys in the grid's order
DEFAULT_GRID_KEYS = ["7ab0ee784a07", "bea6addacb43", "1bb4ce69c857", "6af4e2de5c91",
                     "e28d1718e860", "3f25af9b3036", "ff5709f4514e", "9aa091c74aea",
                     "4ad3da7ee32c", "897ef646f9a3", "e6ee5d8cb1ee", "b7924a040c10",
                     "2f1b94c2ece0", "40fe7df5401e"]
# atlas.quick_grid(): Patch, Blend, FTrojan, TrojanNN, Patch/all-to-all at their strong rates
QUICK_GRID_KEYS = ["cc9eec69cead", "74cdd2e953b4", "b8c02bf84cdc", "c384ec3db740",
                   "5d0063939065"]
# atlas_grid(datasets=("digits",), seeds=(0,)): every attack at its two rates
ATLAS_DIGITS_KEYS = {
    "AdaptiveBlend 0.05": "3b5297a97f74", "AdaptiveBlend 0.1": "d1b7dc0ef86e",
    "BPP 0.05": "25df291c6635", "BPP 0.1": "e00032b8f0f3",
    "Blend 0.01": "ad6c42fd4592", "Blend 0.1": "9520af24e620",
    "Checkerboard 0.005": "4c281cfba5ff", "Checkerboard 0.05": "351e77356081",
    "FTrojan 0.01": "d75c257a84ad", "FTrojan 0.02": "386512c03fa9",
    "InputAware 0.05": "03457271b945", "InputAware 0.2": "7b0dfdfe5c5b",
    "LowFrequency 0.01": "7a10e0f6c492", "LowFrequency 0.05": "7f5f7a0f38ed",
    "Patch 0.005": "897ef646f9a3", "Patch 0.05": "2f1b94c2ece0",
    "Patch/all-to-all 0.05": "3dabd655f4ad", "Patch/all-to-all 0.2": "e603bc33ee9d",
    "Patch/clean-label 0.049": "2cb263da54f4", "Patch/clean-label 0.098": "d71938220aab",
    "Patch/label-consistent 0.025": "00a0d907106b", "Patch/label-consistent 0.049": "dc7260edcbba",
    "Pixel 0.01": "98c92a714995", "Pixel 0.1": "8743de61e63a",
    "Sinusoid 0.05": "c06c72ef00b7", "Sinusoid 0.2": "4ea4ff3ec04d",
    "TrojanNN 0.005": "b05ea7c76c0a", "TrojanNN 0.02": "c39c59788763",
    "Warp 0.05": "972737133802", "Warp 0.2": "1b2498458148",
}
# The run-cache key (data/runs/<key>) of the run each point trains first: the attacked model, or
# for the crafted triggers (TrojanNN, LowFrequency) the clean model they are crafted on. The
# sweep's point (digits, strong rate, seed 0) and atlas.train_attack(digits, name) name one run.
DEFAULT_RUN_KEY = "144a3f93522011eb"  # train_backdoor(digits, Patch(size=3), 0.05, 0): the demo
CLEAN_PATCH2_KEY = "b1b80cef83f3be8c"  # SweepGrid()'s Patch 2 rate-0 control
ATTACK_RUN_KEYS = {
    "Patch": "144a3f93522011eb", "Blend": "7f9b99c931e4439f", "FTrojan": "17a4b948f430dfea",
    "Warp": "d65c73102548c645", "BPP": "84711f20a4307b8d", "AdaptiveBlend": "bcfe11e7aee8f8b8",
    "TrojanNN": "b21023bf98e6b769", "LowFrequency": "b21023bf98e6b769",
    "InputAware": "input-aware-d34556d9e249bb46", "Patch/clean-label": "1b928cf6565de8c9",
    "Patch/label-consistent": "d38f5b9dd4deb6d5", "Patch/all-to-all": "353103b108289f61",
}


class _Entered(Exception):
    """Raised where a training enters the run cache's lock: its key is known, nothing trains."""


@pytest.fixture
def run_key(monkeypatch, tmp_path):
    """run_key(fn) -> the run-cache key of the first run `fn()` would train (an empty run cache:
    every lookup misses, so the training takes the run folder's lock, where it is stopped)."""
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    entered = []

    def locked(path):
        entered.append(path.name)
        raise _Entered

    monkeypatch.setattr(runstore, "locked", locked)

    def key(fn):
        entered.clear()
        with pytest.raises(_Entered):
            fn()
        return entered[0]

    return key


def test_the_versions_the_pins_were_made_with():
    versions = sw.SweepGrid(trigger_sizes=(3,), rates=(0.05,)).points()[0]["versions"]
    assert versions == PINNED_VERSIONS, (
        "a version changed: every sweep-row (and, for train_cache/workbench, run-cache) key moves "
        "with it, on purpose; recompute the keys in this file and update them with the versions")


def test_sweep_row_keys_are_pinned():
    assert [p["key"] for p in sw.SweepGrid().points()] == DEFAULT_GRID_KEYS
    assert [p["key"] for p in atlas.quick_grid().points()] == QUICK_GRID_KEYS
    points = atlas.atlas_grid(datasets=("digits",), seeds=(0,)).points()
    assert {f"{p['attack']} {p['rate']}": p["key"] for p in points} == ATLAS_DIGITS_KEYS


def test_run_cache_keys_are_pinned(run_key, digits):
    assert run_key(lambda: wb.train_backdoor(digits, trigger=wb.triggers.Patch(size=3), rate=0.05,
                                             target=0, progress=False)) == DEFAULT_RUN_KEY
    default = {(p["trigger"].get("size"), p["rate"]): p for p in sw.SweepGrid().points()}
    assert run_key(lambda: sw.run_point(default[(2, 0.0)])) == CLEAN_PATCH2_KEY
    assert run_key(lambda: sw.run_point(default[(3, 0.05)])) == DEFAULT_RUN_KEY
    strong = {p["attack"]: p for p in atlas.atlas_grid(datasets=("digits",), seeds=(0,),
                                                       rates="strong").points()}
    for name, want in ATTACK_RUN_KEYS.items():
        assert run_key(lambda: sw.run_point(strong[name])) == want, name
        assert run_key(lambda: atlas.train_attack(digits, name)) == want, name

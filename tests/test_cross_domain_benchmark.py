"""The decision helpers of benchmarks/cross_domain_benchmark.py (issue 27): results keys of a second
seed must not collide with the first seed's, and the variant-vs-default comparison must pair the
same test cases of the held-out family only, with a Wilcoxon p-value checked against the exact
hand-computed value."""
from __future__ import annotations

import pytest

from benchscripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("cross_domain_benchmark")


def test_second_seed_is_its_own_row(bench):
    first = bench.run_key(2, "HeatmapMatchingTrainer", "nnunet_scale", bench.DEFAULT_SEED)
    second = bench.run_key(2, "HeatmapMatchingTrainer", "nnunet_scale", 3027)
    assert first == "family_c_endorectal_small|HeatmapMatchingTrainer|nnunet_scale"  # the stored rows' keys
    assert second != first and second.endswith("|seed 3027")
    assert bench._key_parts(second) == ("family_c_endorectal_small", "HeatmapMatchingTrainer", "nnunet_scale, seed 3027")
    folds = bench.run_key(2, "T", "default", 3027, "fold 0 (TTA; MR)")
    assert bench._key_parts(folds)[2] == "default, fold 0 (TTA; MR), seed 3027"
    assert bench.parse_key(folds) == ("family_c_endorectal_small", "T", "default", ["fold 0 (TTA; MR)"], 3027)
    assert bench.parse_key(first)[3:] == ([], bench.DEFAULT_SEED)


def _row(per_case: dict, mr: float = 2.0) -> dict:
    domain = {"MR": {"mre_mm": mr}, "US": {"mre_mm": 2.0}, "sre_mm": 3.0}
    return {"in_domain": domain, "cross_domain": domain, "per_case": per_case}


def test_paired_test_uses_only_the_held_out_familys_cases(bench):
    fam = bench.FAMILIES[1]  # held out B: its cases are FamB_*
    cases = [f"FamB_{i:03d}" for i in range(6)]
    default = {c: {"MR": 3.0 + i, "US": 2.0, "sre_mm": 4.0} for i, c in enumerate(cases)}
    variant = {c: {"MR": 2.0 + i, "US": 2.0, "sre_mm": 4.0} for i, c in enumerate(cases)}  # 1 mm better each
    # an in-domain case of family A much worse under the variant must not enter the cross-domain test
    default["FamA_000"] = {"MR": 1.0, "US": 1.0, "sre_mm": 1.0}
    variant["FamA_000"] = {"MR": 50.0, "US": 50.0, "sre_mm": 50.0}
    runs = {f"{fam}|T|default": _row(default, 3.0), f"{fam}|T|nnunet_scale": _row(variant, 2.5)}
    lines = bench.variant_comparison(runs)
    table = [ln for ln in lines if ln.startswith("| T | nnunet_scale")]
    assert table == [f"| T | nnunet_scale | {bench.DEFAULT_SEED} | {fam} | 3.00 -> 2.50 | 2.00 -> 2.00 | 3.00 -> 3.00 | "
                     "3.00 -> 2.50 | 2.00 -> 2.00 | 3.00 -> 3.00 |"]
    test = [ln for ln in lines if "Wilcoxon" in ln]
    assert len(test) == 1
    # six differences all -1 mm: exact two-sided signed-rank p = 2 / 2**6 = 0.03125
    assert "MR MRE median change -1.00 mm, better on 6/6, p = 0.031" in test[0]
    assert "US MRE median change +0.00 mm, better on 0/6, p = 1.000" in test[0]


def test_seeds_are_pooled_when_both_exist(bench):
    fam = bench.FAMILIES[0]
    cases = [f"FamA_{i:03d}" for i in range(4)]
    base = {c: {"MR": 3.0, "US": 3.0, "sre_mm": 3.0} for c in cases}
    better = {c: {"MR": 2.0 + 0.1 * i, "US": 3.0, "sre_mm": 3.0} for i, c in enumerate(cases)}
    runs = {f"{fam}|T|default": _row(base), f"{fam}|T|nnunet_scale": _row(better),
            f"{fam}|T|default|seed 3027": _row(base), f"{fam}|T|nnunet_scale|seed 3027": _row(better)}
    test = [ln for ln in bench.variant_comparison(runs) if "Wilcoxon" in ln]
    # 4 pairs per seed are too few for a test; pooled, 8 are enough
    assert len(test) == 1 and "seeds pooled" in test[0] and "better on 8/8" in test[0]

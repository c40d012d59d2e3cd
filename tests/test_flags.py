"""The Flag type (lmkreg.trust.flags): JSON round trip, files written before the details, and
de-duplication by fields."""
from __future__ import annotations

import json

import numpy as np

from lmkreg.io.landmarks import LandmarkSet, read_lmkreg_json, write_lmkreg_json
from lmkreg.trust.flags import (DETAILS_KEY, PREDICTOR, UNKNOWN, Flag, add_flags, flag_details, flag_texts,
                                landmark_flag, read_flags, scoped_flag, unique_flags)

NAMES = ["apex", "bladder_neck", "posterior_median"]


def _flags() -> list[Flag]:
    return [landmark_flag(PREDICTOR, "apex", "heatmap_spread_mm", "heatmap spread 12.3 mm > 10.0 mm",
                          np.float32(12.3), 10.0, "mm"),
            scoped_flag("plausibility", "case", "landmark_centre_offset_mm", "landmarks' centre 31.0 mm from ...",
                        31.0, 12.5, "mm"),
            scoped_flag("plausibility", "image", "extent_S_mm", "extent along S 300 mm is 2.7x ...", 300, 220.0, "mm"),
            landmark_flag(PREDICTOR, "bladder_neck", "outside_planned_field_of_view", "outside the planned field of view")]


def test_flag_text_is_the_sentence_and_fields_are_plain_numbers():
    f = _flags()[0]
    assert f.text == str(f) == "apex: heatmap spread 12.3 mm > 10.0 mm"
    assert (f.scope, f.landmark) == ("apex", "apex") and type(f.value) is float and f.limit == 10.0
    assert Flag("x", None, "s", float("nan"), float("inf"), "case: t").value is None  # JSON has no NaN
    assert _flags()[1].scope == "case" and _flags()[1].landmark is None


def test_flags_round_trip_through_a_landmark_json(tmp_path):
    flags = _flags()
    lm = LandmarkSet({n: [1.0, 2.0, 3.0] for n in NAMES},
                     {"reliable": False, "flags": flag_texts(flags), DETAILS_KEY: flag_details(flags)})
    path = write_lmkreg_json(lm, tmp_path / "case.json")
    doc = json.loads(path.read_text())
    assert doc["extras"]["flags"] == [f.text for f in flags]  # the sentences, unchanged
    back = read_flags(read_lmkreg_json(path).extras, NAMES)
    assert back == [Flag(f.source, f.landmark, f.signal, f.value, f.limit, f.text, f.unit, f.scope) for f in flags]
    assert back[0].value == float(np.float32(12.3))


def test_files_without_details_give_flags_from_their_sentences():
    extras = {"reliable": False, "flags": ["apex: folds disagree by 6.0 mm > 5.0 mm", "case: landmarks' centre ...",
                                           "image: extent along S ...", "seminal_vesicle: made up"]}
    flags = read_flags(extras, NAMES)
    assert [(f.landmark, f.scope, f.signal, f.source, f.value) for f in flags] == [
        ("apex", "apex", UNKNOWN, UNKNOWN, None), (None, "case", UNKNOWN, UNKNOWN, None),
        (None, "image", UNKNOWN, UNKNOWN, None), (None, "seminal_vesicle", UNKNOWN, UNKNOWN, None)]
    assert flag_texts(flags) == extras["flags"]
    assert read_flags({}, NAMES) == [] and read_flags(None) == []
    # details that do not match the sentences (another writer): the sentences are the record
    assert read_flags({"flags": ["apex: x"], DETAILS_KEY: [{"no": "text"}]}, NAMES)[0].signal == UNKNOWN


def test_add_flags_keeps_texts_and_details_together_and_leaves_the_source_lists_alone():
    old = {"flags": ["pair: an old sentence"], "reliable": False}
    copy = dict(old)
    new = scoped_flag("pair", "pair", "rms_residual_mm", "RMS residual 7.0 mm > 5.0 mm", 7.0, 5.0, "mm")
    add_flags(copy, [new])
    assert old["flags"] == ["pair: an old sentence"] and DETAILS_KEY not in old
    assert copy["flags"] == ["pair: an old sentence", new.text]
    assert [d["signal"] for d in copy[DETAILS_KEY]] == [UNKNOWN, "rms_residual_mm"]
    assert read_flags(copy)[1] == new


def test_unique_flags_keeps_one_per_signal_and_landmark_whatever_the_values():
    a1 = landmark_flag(PREDICTOR, "apex", "heatmap_spread_mm", "heatmap spread 12.3 mm > 10.0 mm", 12.3, 10.0, "mm")
    b = landmark_flag(PREDICTOR, "bladder_neck", "heatmap_spread_mm", "heatmap spread 11.0 mm > 10.0 mm", 11.0, 10.0)
    a2 = landmark_flag(PREDICTOR, "apex", "heatmap_spread_mm", "heatmap spread 14.8 mm > 10.0 mm", 14.8, 10.0, "mm")
    c = landmark_flag(PREDICTOR, "apex", "fold_disagreement_mm", "folds disagree by 6.0 mm > 5.0 mm", 6.0, 5.0, "mm")
    # same signal and landmark, different values: one, where the first was, as the last says it
    assert unique_flags([a1, b, a2, c]) == [a2, b, c]
    # differing only in numbers inside the signal's name is not the same check
    p1 = scoped_flag("plausibility", "image", "crop 1st percentile", "crop 1st percentile ...", 1.0, 0.5)
    p99 = scoped_flag("plausibility", "image", "crop 99th percentile", "crop 99th percentile ...", 1.0, 0.5)
    assert unique_flags([p1, p99]) == [p1, p99]

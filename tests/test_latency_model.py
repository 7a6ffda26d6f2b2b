"""The latency model: table lookup, extrapolation, prefill and context terms, presets, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sliceserve.latency_model import LatencyModel, list_presets

MODEL = LatencyModel(name="t", decode_ms=(10.0, 15.0, 18.0), decode_slope_ms=4.0,
                     prefill_ms_per_token=0.5, context_ms_per_token=0.01)


def test_decode_latency_is_a_table_lookup() -> None:
    assert MODEL.decode_latency_ms(0) == 0.0
    assert MODEL.decode_latency_ms(1) == 10.0
    assert MODEL.decode_latency_ms(2) == 15.0
    assert MODEL.decode_latency_ms(3) == 18.0


def test_decode_latency_extrapolates_linearly_beyond_the_table() -> None:
    assert MODEL.decode_latency_ms(4) == 22.0
    assert MODEL.decode_latency_ms(5) == 26.0
    assert MODEL.decode_latency_ms(10) == 18.0 + 4.0 * 7


def test_iteration_adds_prefill_and_context_terms() -> None:
    # A pure decode batch of 3 rows over 300 tokens of context.
    assert MODEL.iteration_ms(3, 3, 300) == pytest.approx(18.0 + 3.0)
    # 2 rows, one decoding and one prefilling 20 tokens: 19 extra tokens of prefill.
    assert MODEL.iteration_ms(2, 21, 0) == pytest.approx(15.0 + 0.5 * 19)
    assert MODEL.iteration_ms(2, 21, 100) == pytest.approx(15.0 + 0.5 * 19 + 1.0)
    assert MODEL.iteration_ms(0, 0, 0) == 0.0


def test_prefill_alone() -> None:
    # decode_ms(1) + prefill per token * (n - 1) + context over the n tokens.
    assert MODEL.prefill_ms(1) == pytest.approx(10.0 + 0.01)
    assert MODEL.prefill_ms(101) == pytest.approx(10.0 + 0.5 * 100 + 0.01 * 101)


def test_iteration_latency_grows_with_rows_and_tokens() -> None:
    model = LatencyModel.load("paper")
    last = 0.0
    for rows in range(1, 40):
        now = model.iteration_ms(rows, rows)
        assert now > last
        last = now
    assert model.iteration_ms(4, 100) > model.iteration_ms(4, 4)


def test_paper_preset_matches_the_authors_table() -> None:
    assert "paper" in list_presets()
    model = LatencyModel.load("paper")
    assert model.name == "paper"
    assert [model.decode_latency_ms(k) for k in range(1, 9)] == [14, 27, 38, 50, 60, 72, 83, 125]
    assert model.decode_latency_ms(9) == pytest.approx(125 + 11.5)
    assert model.prefill_ms(101) == pytest.approx(14 + 0.2 * 100)
    assert model.kv_capacity_tokens == 32768


def test_every_preset_loads() -> None:
    for name in list_presets():
        model = LatencyModel.load(name)
        assert model.decode_latency_ms(1) > 0


def test_dict_round_trip() -> None:
    model = LatencyModel(name="x", decode_ms=(1.0, 2.5), decode_slope_ms=0.5,
                         prefill_ms_per_token=0.1, context_ms_per_token=0.002,
                         kv_capacity_tokens=4096, device="dev", model="m", notes="n")
    data = model.to_dict()
    assert "_table" not in data
    assert data["decode_ms"] == [1.0, 2.5]
    assert LatencyModel.from_dict(data) == model
    assert LatencyModel.from_dict(json.loads(json.dumps(data))) == model


def test_json_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    data = {"schema": "sliceserve.latency/v1", **MODEL.to_dict()}
    path.write_text(json.dumps(data))
    loaded = LatencyModel.load(str(path))
    assert loaded == MODEL
    assert loaded.iteration_ms(5, 40, 77) == MODEL.iteration_ms(5, 40, 77)


def test_a_json_file_without_the_json_suffix_loads_too(tmp_path: Path) -> None:
    path = tmp_path / "device.latency"
    path.write_text(json.dumps(MODEL.to_dict()))
    assert LatencyModel.load(str(path)) == MODEL


def test_from_dict_fills_defaults() -> None:
    model = LatencyModel.from_dict({"decode_ms": [5], "decode_slope_ms": 1,
                                    "prefill_ms_per_token": 0})
    assert model.name == "custom" and model.context_ms_per_token == 0.0
    assert model.decode_latency_ms(3) == 7.0


def test_unknown_preset_name_lists_the_presets() -> None:
    with pytest.raises(ValueError, match="unknown latency model 'nope'.*paper"):
        LatencyModel.load("nope")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        LatencyModel.load(str(tmp_path / "missing.json"))


def test_invalid_json_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        LatencyModel.load(str(path))


def test_json_that_is_not_an_object_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="JSON object"):
        LatencyModel.load(str(path))


@pytest.mark.parametrize(("data", "message"), [
    ({"decode_ms": [1], "decode_slope_ms": 1}, "missing field.*prefill_ms_per_token"),
    ({"decode_ms": [1], "decode_slope_ms": 1, "prefill_ms_per_token": 0, "typo": 1},
     "unknown field.*typo"),
    ({"decode_ms": ["fast"], "decode_slope_ms": 1, "prefill_ms_per_token": 0}, "numbers"),
    ({"decode_ms": 3, "decode_slope_ms": 1, "prefill_ms_per_token": 0}, "numbers"),
    ({"decode_ms": [], "decode_slope_ms": 1, "prefill_ms_per_token": 0}, "at least one"),
    ({"decode_ms": [0], "decode_slope_ms": 1, "prefill_ms_per_token": 0}, "positive"),
    ({"decode_ms": [1, -2], "decode_slope_ms": 1, "prefill_ms_per_token": 0}, "non-negative"),
    ({"decode_ms": [1], "decode_slope_ms": float("nan"), "prefill_ms_per_token": 0}, "finite"),
    ({"decode_ms": [1], "decode_slope_ms": 1, "prefill_ms_per_token": -0.1}, "non-negative"),
])
def test_bad_contents_are_clear_errors(data: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        LatencyModel.from_dict(data)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        LatencyModel.load(str(path))


def test_latency_model_is_immutable() -> None:
    with pytest.raises(AttributeError):
        MODEL.decode_slope_ms = 1.0  # type: ignore[misc]

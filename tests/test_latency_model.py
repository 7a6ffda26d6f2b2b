"""The latency model: table lookup, extrapolation, prefill, context and attention terms,
presets, JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sliceserve.latency_model import LatencyModel, chunk_pairs, list_presets

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


# The same model with a prefill attention term: 0.001 ms per causal query-key pair.
CURVED = dataclasses.replace(MODEL, prefill_attention_ms_per_pair=0.001)


def test_chunk_pairs_count_causal_query_key_pairs() -> None:
    # 4 new tokens after 10 cached: each sees the 10 and itself and those before it.
    assert chunk_pairs(4, 10) == 11 + 12 + 13 + 14 == 4 * (10 + 5 / 2)
    assert chunk_pairs(100) == 100 * 101 / 2
    assert chunk_pairs(1, 500) == 0.0 and chunk_pairs(0, 3) == 0.0  # decode rows: context term
    # However a prompt is cut into chunks, their pairs add up to the whole prompt's.
    assert chunk_pairs(30) + chunk_pairs(50, 30) + chunk_pairs(20, 80) == chunk_pairs(100)


def test_the_attention_term_prices_prompt_chunks() -> None:
    # A decode row over 99 cached tokens (pairs 0) and a chunk of 20 after 30 cached.
    pairs = chunk_pairs(1, 99) + chunk_pairs(20, 30)
    assert pairs == 20 * (30 + 21 / 2)
    assert CURVED.iteration_ms(2, 21, 100 + 50, pairs) == pytest.approx(
        15.0 + 0.5 * 19 + 0.01 * 150 + 0.001 * 810)
    assert CURVED.prefill_ms(101) == pytest.approx(
        10.0 + 0.5 * 100 + 0.01 * 101 + 0.001 * 101 * 102 / 2)
    assert CURVED.prefill_ms(1) == MODEL.prefill_ms(1)  # one token: no pairs
    assert CURVED.chunk_extra_ms(20, 30) == pytest.approx(0.5 * 19 + 0.001 * 810)
    assert CURVED.chunk_extra_ms(1, 30) == 0.0


def test_without_the_attention_term_nothing_changes() -> None:
    # Exactly the linear formula, whatever pairs a caller passes.
    for rows, new, context in [(1, 1, 0), (1, 101, 101), (3, 3, 300), (2, 21, 100), (7, 90, 33)]:
        linear = (MODEL.decode_latency_ms(rows) + 0.5 * (new - rows) + 0.01 * context)
        assert MODEL.iteration_ms(rows, new, context, attention_pairs=1234.5) == linear
        assert MODEL.iteration_ms(rows, new, context) == linear
    for n in (1, 2, 64, 1000):
        assert MODEL.prefill_ms(n) == MODEL.decode_latency_ms(1) + 0.5 * (n - 1) + 0.01 * n
        assert MODEL.chunk_extra_ms(n, 77) == 0.5 * (n - 1)


def test_chunk_tokens_within_is_the_largest_chunk_that_fits() -> None:
    for extra_ms in (0.0, 0.3, 0.5, 7.25, 100.0):
        assert MODEL.chunk_tokens_within(extra_ms, 40) == 1 + int(extra_ms / 0.5)
    free = LatencyModel(name="free", decode_ms=(1.0,), decode_slope_ms=0.0,
                        prefill_ms_per_token=0.0)
    assert free.chunk_tokens_within(5.0) >= 10**9
    for cached in (0, 100, 5000):
        for extra_ms in (0.0, 0.4, 1.0, 3.3, 50.0, 1e4):
            n = CURVED.chunk_tokens_within(extra_ms, cached)
            assert n >= 1 and (n == 1 or CURVED.chunk_extra_ms(n, cached) <= extra_ms)
            assert CURVED.chunk_extra_ms(n + 1, cached) > extra_ms


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


def test_a_model_saved_before_the_attention_term_loads_without_it() -> None:
    old = MODEL.to_dict()
    del old["prefill_attention_ms_per_pair"]
    model = LatencyModel.from_dict(old)
    assert model == MODEL and model.prefill_attention_ms_per_pair == 0.0
    assert model.prefill_ms(500) == MODEL.prefill_ms(500)
    data = CURVED.to_dict()
    assert data["prefill_attention_ms_per_pair"] == 0.001
    assert LatencyModel.from_dict(json.loads(json.dumps(data))) == CURVED


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
    ({"decode_ms": [1], "decode_slope_ms": 1, "prefill_ms_per_token": 0,
      "prefill_attention_ms_per_pair": -1e-4}, "non-negative"),
    ({"decode_ms": [1], "decode_slope_ms": 1, "prefill_ms_per_token": 0,
      "prefill_attention_ms_per_pair": float("inf")}, "finite"),
    ({"decode_ms": [1], "decode_slope_ms": 1, "prefill_ms_per_token": 0,
      "prefill_attention_ms_per_pair": "x"}, "numbers"),
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

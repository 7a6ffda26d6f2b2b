"""EngineConfig: one frozen, validated description of a live engine (sliceserve/engine/config.py).

Nothing here loads a model: every check happens on construction.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sliceserve.engine.config import BACKENDS, DTYPES, QUANTIZATIONS, EngineConfig
from sliceserve.latency_model import LatencyModel
from sliceserve.latency_online import OnlineLatencyOptions
from sliceserve.server.config import ServerConfig


def test_defaults_are_the_documented_ones() -> None:
    config = EngineConfig()
    assert (config.model, config.backend, config.policy, config.dtype) == (
        None, "torch", "slice", "auto")
    assert config.scheduler_limits() == {"max_num_batched_tokens": 2048, "max_num_seqs": 256}
    assert config.online_latency == OnlineLatencyOptions()
    assert BACKENDS == ("torch", "llamacpp", "auto")


def test_it_is_frozen_and_its_options_read_only() -> None:
    config = EngineConfig(policy="orca", policy_options={"max_batch_size": 4})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.policy = "vllm"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.policy_options["max_batch_size"] = 8  # type: ignore[index]
    assert config.replace(max_num_seqs=3).max_num_seqs == 3 and config.max_num_seqs == 256


@pytest.mark.parametrize(("settings", "message"), [
    ({"backend": "onnx"}, "backend must be one of torch, llamacpp, auto, got 'onnx'"),
    ({"dtype": "int4"}, "dtype must be one of auto, bfloat16, float16, float32"),
    ({"quantization": "int4"}, "quantization must be one of none, int8"),
    ({"max_num_batched_tokens": 0}, "max_num_batched_tokens must be a positive integer"),
    ({"max_num_seqs": True}, "max_num_seqs must be a positive integer"),
    ({"max_model_len": -1}, "max_model_len must be a positive integer"),
    ({"num_threads": 1.5}, "num_threads must be a positive integer"),
    ({"kv_cache_memory_gb": 0}, "kv_cache_memory_gb must be > 0"),
    ({"policy": "fifo"}, "unknown policy 'fifo'; valid: .*orca"),
    ({"policy": "orca", "policy_options": {"nonsense": 1}}, "has no option"),
    ({"policy_options": [("a", 1)]}, "policy_options must be a mapping"),
    ({"latency_model": "no-such-model.json"}, "no-such-model"),
    ({"online_latency": "yes"}, "online_latency must be"),
])
def test_bad_settings_fail_on_construction(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngineConfig(**settings)  # type: ignore[arg-type]


def test_unknown_keys_are_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="unknown setting.*'max_num_batch_tokens' "
                       r"\(did you mean 'max_num_batched_tokens'\?\).*valid: model, backend"):
        EngineConfig.from_dict({"policy": "vllm", "max_num_batch_tokens": 64})
    with pytest.raises(ValueError, match="'colour'"):
        EngineConfig().replace(colour="red")
    config = EngineConfig.from_dict({"policy": "vllm", "max_num_batched_tokens": 64})
    assert config.max_num_batched_tokens == 64


def test_values_are_normalized() -> None:
    config = EngineConfig(model=Path("/x/model.gguf"), online_latency=False,
                          latency_model=Path("paper"))
    assert config.model == "/x/model.gguf" and config.online_latency is None
    assert config.latency_model == "paper"
    assert EngineConfig(online_latency=True).online_latency == OnlineLatencyOptions()
    paper = LatencyModel.load("paper")
    assert EngineConfig(latency_model=paper).load_latency_model() is paper
    assert EngineConfig().load_latency_model() is None


def test_to_dict_round_trips() -> None:
    config = EngineConfig(policy="orca", policy_options={"max_batch_size": 4},
                          latency_model=LatencyModel.load("paper"), max_num_seqs=7)
    data = config.to_dict()
    assert data["latency_model"] == LatencyModel.load("paper").name
    data["latency_model"] = "paper"
    data["online_latency"] = True
    again = EngineConfig.from_dict(data)
    assert again.policy_options == {"max_batch_size": 4} and again.max_num_seqs == 7


def test_the_choices_match_the_engines() -> None:
    """engine/config.py lists the choices without torch; they must be the model's."""
    precision = pytest.importorskip("sliceserve.model.precision")
    assert DTYPES == precision.DTYPE_CHOICES
    assert QUANTIZATIONS == precision.QUANTIZATIONS


def test_the_server_builds_from_an_engine_config() -> None:
    config = ServerConfig(engine=EngineConfig(policy="vllm", max_num_seqs=8), port=0)
    assert config.engine.max_num_seqs == 8 and config.engine.backend == "torch"
    with pytest.raises(ValueError, match="engine must be an EngineConfig"):
        ServerConfig(engine={"policy": "vllm"})  # type: ignore[arg-type]


def test_llm_takes_a_config_or_settings_not_both(tmp_path: Path) -> None:
    from sliceserve import LLM

    with pytest.raises(ValueError, match="not both"):
        LLM(tmp_path, config=EngineConfig())
    with pytest.raises(ValueError, match="not both"):
        LLM(config=EngineConfig(), dtype="float32")
    with pytest.raises(ValueError, match=r"LLM\(\): unknown setting\(s\) 'dtpye'"):
        LLM(tmp_path, dtpye="float32")

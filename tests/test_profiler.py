"""The profiler: the fit recovers a known latency model, a real runner is measured at every
shape that fits its cache, and the profile of a model on a device is cached."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from sliceserve.bench.profile_report import latency_model_json, points_json, points_path
from sliceserve.latency_model import LatencyModel
from sliceserve.model import profile_cache, profiler
from sliceserve.model.cpu import cpu_info
from sliceserve.model.profile_cache import (
    cached_profile_path,
    engine_fingerprint,
    latency_model_for,
    load_cached_profile,
    profile_key,
    source_fingerprint,
    store_profile,
)
from sliceserve.model.profile_fit import (
    Profile,
    ProfileError,
    ProfilePoint,
    decode_table,
    fit_errors,
    fit_latency_model,
    fit_prefill,
)
from sliceserve.model.profiler import profile_runner
from sliceserve.model.runner import ModelRunner, RunnerConfig
from tests.tiny_models import make_tiny_model

BATCHES = (1, 2, 4, 8, 12, 16, 24, 32)
# Piecewise linear between the measured batch sizes and linear from 16 on, so a table
# interpolated between them and the least-squares tail slope are exact.
TRUE_BASE = {1: 20.0, 2: 22.0, 4: 25.0, 8: 32.0, 12: 38.0, 16: 45.0, 24: 60.0, 32: 75.0}
TRUE_SLOPE = 15.0 / 8


def true_model() -> LatencyModel:
    return LatencyModel(name="true", decode_ms=tuple(decode_table(TRUE_BASE)),
                        decode_slope_ms=TRUE_SLOPE, prefill_ms_per_token=0.3,
                        context_ms_per_token=0.002, kv_capacity_tokens=4096)


def synthetic_profile(model: LatencyModel) -> Profile:
    def point(kind: str, b: int, c: int, n: int, after: int = 0) -> ProfilePoint:
        shape = ProfilePoint(kind, b, c, n, 1.0, (), after)  # type: ignore[arg-type]
        return ProfilePoint(kind, b, c, n, shape.predicted_ms(model), (),  # type: ignore
                            after)

    points = ([point("decode", b, c, 0) for c in (256, 1024) for b in BATCHES]
              + [point("prefill", 0, 0, n) for n in (32, 64, 128, 256, 512)]
              + [point("prefill", 0, 0, 256, 512)]
              + [point("mixed", 4, 256, 128), point("mixed", 16, 256, 256)])
    return Profile(model="m", device="cpu", dtype="bfloat16", num_threads=2,
                   kv_capacity_tokens=4096, points=tuple(points))


def test_the_fit_recovers_a_synthetic_latency_model() -> None:
    truth = true_model()
    fitted = fit_latency_model(synthetic_profile(truth), "fit", "cpu", "m")
    assert fitted.decode_ms == pytest.approx(truth.decode_ms)
    assert fitted.decode_slope_ms == pytest.approx(TRUE_SLOPE)
    assert fitted.prefill_ms_per_token == pytest.approx(0.3)
    assert fitted.context_ms_per_token == pytest.approx(0.002)
    assert fitted.kv_capacity_tokens == 4096
    assert (fitted.name, fitted.device, fitted.model) == ("fit", "cpu", "m")
    errors = fit_errors(synthetic_profile(truth), fitted)
    assert len(errors) == 16 + 6 + 2 and max(abs(e.error) for e in errors) < 1e-9
    for k in (40, 64):  # beyond the table: the extrapolation of the truth
        assert fitted.decode_latency_ms(k) == pytest.approx(truth.decode_latency_ms(k))


def test_the_fit_recovers_a_prefill_attention_term() -> None:
    truth = dataclasses.replace(true_model(), prefill_attention_ms_per_pair=5e-4)
    profile = synthetic_profile(truth)
    fitted = fit_latency_model(profile, "fit")
    assert fitted.prefill_attention_ms_per_pair == pytest.approx(5e-4)
    assert fitted.prefill_ms_per_token == pytest.approx(0.3)
    assert fitted.context_ms_per_token == pytest.approx(0.002)
    # Every point, the later chunk and the mixed iterations too, to rounding.
    assert max(abs(e.error) for e in fit_errors(profile, fitted)) < 1e-9
    # The linear model of the same points misses the curve: long prompts cost more per token.
    linear = dataclasses.replace(fitted, prefill_attention_ms_per_pair=0.0)
    assert max(abs(e.error) for e in fit_errors(profile, linear)) > 0.1


def test_without_a_curve_the_prefill_fit_stays_linear() -> None:
    def prefill(n: int, ms: float, after: int = 0) -> ProfilePoint:
        return ProfilePoint("prefill", 0, 0, n, ms, (), after)

    # A straight line (no attention cost) and a concave one (q would be negative): q = 0.
    line = [prefill(n, 10.0 + 0.3 * (n - 1)) for n in (32, 128, 512)]
    assert fit_prefill(line, 10.0, 0.0) == pytest.approx((0.3, 0.0))
    concave = [prefill(32, 30.0), prefill(128, 60.0), prefill(512, 150.0)]
    per_token, per_pair = fit_prefill(concave, 10.0, 0.0)
    assert per_pair == 0.0 and per_token > 0
    # One prompt shape cannot tell the two terms apart; no prompts at all fit nothing.
    assert fit_prefill([prefill(64, 40.0)], 10.0, 0.0) == pytest.approx((30.0 / 63, 0.0))
    assert fit_prefill([], 10.0, 0.0) == (0.0, 0.0)


def test_the_fit_error_names_a_point_that_misses() -> None:
    truth = true_model()
    profile = synthetic_profile(truth)
    off = [p if p.prefill_tokens != 512 or p.kind != "prefill"
           else ProfilePoint("prefill", 0, 0, 512, p.ms * 2) for p in profile.points]
    fitted = fit_latency_model(Profile(**{**profile.__dict__, "points": tuple(off)}), "fit")
    worst = max(fit_errors(off, fitted), key=lambda e: abs(e.error))
    assert worst.point.label() == "prefill 512" and worst.error < -0.2
    assert "max" in fitted.notes


def test_the_decode_table_never_falls_and_needs_batch_1() -> None:
    assert decode_table({1: 10.0, 2: 9.0, 4: 14.0}) == [10.0, 10.0, 11.5, 14.0]
    one_context = [ProfilePoint("decode", 2, 64, 0, 5.0)]
    with pytest.raises(ProfileError, match="batch size 1"):
        fit_latency_model(Profile("m", "cpu", "float32", 1, 100, tuple(one_context)), "x")
    with pytest.raises(ProfileError, match="kind"):
        ProfilePoint("decoding", 1, 0, 0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ProfileError, match="positive"):
        ProfilePoint("decode", 1, 0, 0, 0.0)


def test_a_profile_round_trips_through_json() -> None:
    profile = synthetic_profile(true_model())
    again = Profile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again == profile
    with pytest.raises(ProfileError, match="schema"):
        Profile.from_dict({"points": []})


# --- a real runner ---

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")


def tiny_runner(folder: Path, num_kv_blocks: int = 64) -> ModelRunner:
    return ModelRunner(folder, RunnerConfig(dtype="float32", num_kv_blocks=num_kv_blocks,
                                            num_threads=1))


def test_profile_runner_times_every_shape_that_fits(tiny_folder: Path, tmp_path: Path) -> None:
    runner = tiny_runner(tiny_folder)  # 64 blocks of 16 tokens
    profile = profile_runner(runner, batch_sizes=(1, 2, 4), context_lengths=(16, 200),
                             prefill_tokens=(8, 40), prefill_chunks=((16, 40),),
                             mixed=((2, 16, 8),), repeats=2, min_decode_steps=4,
                             model="tiny")
    shapes = {(p.kind, p.batch_size, p.context_tokens, p.prefill_tokens,
               p.prefill_context_tokens) for p in profile.points}
    # The largest, 4 rows x 201 tokens, needs 4 x 13 of the 64 blocks: everything fits.
    assert len(shapes) == 3 * 2 + 3 + 1 and profile.skipped == ()
    assert ("prefill", 0, 0, 16, 40) in shapes and ("mixed", 2, 16, 8, 0) in shapes
    # Decode shapes run min_decode_steps steps; shapes with a prompt chunk `repeats` times.
    assert all(p.ms > 0 and len(p.samples_ms) == (4 if p.kind == "decode" else 2)
               and min(p.samples_ms) > 0 for p in profile.points)
    assert profile.kv_capacity_tokens == 64 * 16 and profile.num_threads == 1
    model = fit_latency_model(profile, "tiny@cpu", "cpu", "tiny")
    path = tmp_path / "tiny.json"
    path.write_text(latency_model_json(model))
    points_path(path).write_text(points_json(profile, model))
    assert LatencyModel.load(str(path)) == model
    saved = json.loads(points_path(path).read_text())
    assert Profile.from_dict(saved["profile"]) == profile and len(saved["fit"]) == 10


def test_a_decode_shape_is_timed_once_a_round_over_many_rounds(tiny_folder: Path) -> None:
    # The machine's speed drifts over seconds: a decode shape's median is over many moments
    # (one timed step after its warm-up step in each round), not a few steps in a row; the
    # prompt shapes run in `repeats` of those rounds, spread over them.
    order: list[str] = []
    profile = profile_runner(tiny_runner(tiny_folder), batch_sizes=(1, 2), context_lengths=(16,),
                             prefill_tokens=(8,), prefill_chunks=(), mixed=(), repeats=2,
                             warmup=1, min_decode_steps=5,
                             progress=lambda done, total, what: order.append(what))
    assert len(order) == 5 * 2 * 2 + 1 + 2  # 5 rounds x 2 decode shapes x (warm-up + timed)
    assert order[:4] == ["decode 1 x ctx 16"] * 2 + ["decode 2 x ctx 16"] * 2
    assert [p.label() for p in profile.points] == ["decode 1 x ctx 16", "decode 2 x ctx 16",
                                                    "prefill 8"]
    assert [len(p.samples_ms) for p in profile.points] == [5, 5, 2]
    # The prompt shape: its warm-up and first chunk in round 0, its second chunk later.
    prompt_at = [i for i, what in enumerate(order) if what == "prefill 8"]
    assert prompt_at[:2] == [4, 5] and prompt_at[2] > len(order) // 2


def test_shapes_beyond_the_kv_cache_are_skipped(tiny_folder: Path) -> None:
    runner = tiny_runner(tiny_folder, num_kv_blocks=16)  # 256 tokens
    profile = profile_runner(runner, batch_sizes=(1, 8), context_lengths=(32, 300),
                             prefill_tokens=(8,), prefill_chunks=((8, 250),), mixed=(),
                             repeats=1, warmup=0)
    assert profile.skipped == ("decode 8 x ctx 32", "decode 1 x ctx 300", "decode 8 x ctx 300",
                               "prefill 8 after 250")  # 258 tokens > max_model_len 256
    assert [p.label() for p in profile.points] == ["decode 1 x ctx 32", "prefill 8"]
    with pytest.raises(ProfileError, match="fits"):
        profile_runner(runner, batch_sizes=(64,), context_lengths=(300,), prefill_tokens=(),
                       mixed=())


def test_latency_model_for_calibrates_once_then_reads_the_cache(
        tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(profiler, "_load_average", lambda: 0.5)  # a quiet machine
    runner = tiny_runner(tiny_folder, num_kv_blocks=2200)
    key = profile_key(runner, "tiny")
    assert key == profile_key(runner, "another name for the same folder")
    # float32, head_dim 16: the fused ops (every dtype), not the decode kernel (64 or 128).
    if runner.kernel_path == "eager":  # no C++ toolchain here
        assert key.engine == f"{engine_fingerprint()}/eager"
    else:
        assert key.engine == f"{engine_fingerprint()}/fused-ops/{runner.kernel_path}"
    assert key.cpu == cpu_info().describe() and key.dtype == "float32"
    path = cached_profile_path(key)
    assert path.parent == tmp_path / "profiles" and not path.exists()

    first = latency_model_for(runner, "tiny", cache=False)
    assert not path.exists() and first.kv_capacity_tokens == 2200 * 16
    calibrated = latency_model_for(runner, "tiny")
    assert path.exists() and calibrated.decode_ms[0] > 0

    # The second call must come from the file: mark it and look for the mark. The file is
    # made to look like one cached before the prefill attention term existed.
    data = json.loads(path.read_text())
    data["latency_model"]["decode_slope_ms"] = 123.25
    del data["latency_model"]["prefill_attention_ms_per_pair"]
    path.write_text(json.dumps(data))
    smaller = tiny_runner(tiny_folder, num_kv_blocks=100)  # capacity is the runner's own
    cached = latency_model_for(smaller, "tiny")
    assert cached.decode_slope_ms == 123.25 and cached.kv_capacity_tokens == 100 * 16
    assert cached.prefill_attention_ms_per_pair == 0.0
    assert cached.decode_ms == calibrated.decode_ms

    path.write_text("{ not json")  # a corrupt cache costs a calibration, not an error
    again = latency_model_for(smaller, "tiny")
    assert again.decode_slope_ms != 123.25 and json.loads(path.read_text())["key"]["dtype"] \
        == "float32"


def test_the_engine_fingerprint_follows_the_engine_code(tmp_path: Path) -> None:
    package = tmp_path / "sliceserve"
    files = {"model/kernels/simd.h": "// simd", "model/kernels/attention.cpp": "// attention",
             "model/kernels/__init__.py": "FLAGS = ['-O3']", "model/llama.py": "# llama",
             "model/attention.py": "# attention", "model/runner.py": "# runner",
             "cli.py": "# not the engine", "model/kernels/notes.txt": "not a source"}
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    base = source_fingerprint(package, "0.1.0")
    assert re.fullmatch(r"[0-9a-f]{12}", base), base  # 12 lower-case hex digits
    assert source_fingerprint(package, "0.1.0") == base

    def changed(name: str, text: str) -> str:
        old = (package / name).read_text()
        (package / name).write_text(text)
        try:
            return source_fingerprint(package, "0.1.0")
        finally:
            (package / name).write_text(old)

    for name in ("model/kernels/simd.h", "model/kernels/attention.cpp",
                 "model/kernels/__init__.py", "model/llama.py", "model/attention.py",
                 "model/runner.py"):
        assert changed(name, files[name] + " // faster") != base, name
    assert changed("cli.py", "# edited") == base  # outside the engine's hot path
    assert changed("model/kernels/notes.txt", "edited") == base
    assert source_fingerprint(package, "0.2.0") != base
    (package / "model/kernels/new.cpp").write_text("")  # an empty new file still counts
    assert source_fingerprint(package, "0.1.0") != base
    # This installation's: computed once, from the package's own files.
    import sliceserve

    real = Path(sliceserve.__file__).parent
    assert engine_fingerprint() == engine_fingerprint()
    assert engine_fingerprint.cache_info().currsize == 1
    assert engine_fingerprint() in {source_fingerprint(real, v) for v in (
        _installed_version(), "unknown")}


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sliceserve")
    except PackageNotFoundError:
        return "unknown"


def test_a_profile_of_other_engine_code_is_not_reused(
        tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the engine changes (a new fingerprint), the cached profile is measured again."""
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(profiler, "_load_average", lambda: 0.5)
    measured = []

    def fake_profile(runner: object, **settings: object) -> Profile:
        measured.append(settings)
        return synthetic_profile(true_model())

    monkeypatch.setattr(profile_cache, "profile_runner", fake_profile)
    runner = tiny_runner(tiny_folder)
    monkeypatch.setattr(profile_cache, "engine_fingerprint", lambda: "0ld0ld0ld0ld")
    old_key = profile_key(runner, "tiny")
    latency_model_for(runner, "tiny")
    latency_model_for(runner, "tiny")
    assert len(measured) == 1 and load_cached_profile(old_key) is not None

    monkeypatch.setattr(profile_cache, "engine_fingerprint", lambda: "0e10e10e10e1")
    new_key = profile_key(runner, "tiny")
    assert new_key.engine.startswith("0e10e10e10e1/") and new_key != old_key
    assert cached_profile_path(new_key) != cached_profile_path(old_key)
    assert load_cached_profile(new_key) is None
    latency_model_for(runner, "tiny")
    assert len(measured) == 2 and load_cached_profile(new_key) is not None

    # A file written before keys had an engine, at the new key's path, is not used either.
    path = cached_profile_path(new_key)
    data = json.loads(path.read_text())
    del data["key"]["engine"]
    path.write_text(json.dumps(data))
    assert load_cached_profile(new_key) is None


def test_the_key_tells_the_compiled_kernels_from_the_pytorch_path(tiny_folder: Path) -> None:
    from sliceserve.model.kernels import cpu_kernels

    if cpu_kernels() is None:
        pytest.skip("no C++ toolchain here: every runner takes the PyTorch path")

    def key(**config: object) -> profile_cache.ProfileKey:
        runner = ModelRunner(tiny_folder, RunnerConfig(dtype="bfloat16", num_kv_blocks=8,
                                                       num_threads=1, **config))
        return profile_key(runner, "tiny")

    # head_dim 16: the fused ops run (bf16), the decode kernel does not (it needs 64 or 128).
    fused, plain = key(), key(cpu_kernels=False)
    assert fused.engine.startswith(f"{engine_fingerprint()}/") and "fused-ops" in fused.engine
    assert plain.engine == f"{engine_fingerprint()}/eager"
    assert cached_profile_path(fused) != cached_profile_path(plain)


def test_the_key_knows_the_cpu_and_the_kernels_vector_path(
        tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile measured on one CPU model or flag set is never another's: a CPU faked to
    lack AVX-512 (or, on an AVX2-only CPU, to have it; same model name), or another model
    name, gets another key and file, and finds nothing cached; a build of the kernels for
    another vector path too."""
    from sliceserve.model import cpu as cpu_module
    from sliceserve.model.kernels import cpu_kernels

    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path))
    here = profile_key(tiny_runner(tiny_folder, num_kv_blocks=64), "tiny")
    store_profile(here, fit_latency_model(synthetic_profile(true_model()), "fit"),
                  synthetic_profile(true_model()))
    assert load_cached_profile(here) is not None
    real = cpu_module.detected_cpu()
    # another flag set, whichever this CPU has: AVX2 only, or (on an AVX2-only CPU) AVX-512
    other_flags = (("avx2", "f16c", "fma") if "avx512f" in real.all_flags
                   else ("avx2", "avx512f", "f16c", "fma"))
    for fake in (cpu_module.CpuInfo(real.model, real.arch, other_flags),
                 cpu_module.CpuInfo("Another CPU", real.arch, real.all_flags)):
        monkeypatch.setattr(cpu_module, "cpu_info", lambda fake=fake: fake)
        # float32 asked for: only the CPU differs (auto would change the dtype as well)
        there = profile_key(tiny_runner(tiny_folder, num_kv_blocks=64), "tiny")
        assert there.cpu == fake.describe() != here.cpu
        assert cached_profile_path(there) != cached_profile_path(here)
        assert load_cached_profile(there) is None
    monkeypatch.undo()
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path))
    if cpu_kernels() is not None and cpu_kernels("scalar") is not None:
        monkeypatch.setenv("SLICESERVE_KERNELS", "scalar")
        scalar = profile_key(tiny_runner(tiny_folder, num_kv_blocks=64), "tiny")
        assert scalar.engine.endswith("/scalar") and scalar.engine != here.engine
        assert load_cached_profile(scalar) is None


def test_store_profile_keeps_one_file_per_key(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path))
    key = profile_cache.ProfileKey("m", "cpu", "bfloat16", 2, "abc/eager")
    model = fit_latency_model(synthetic_profile(true_model()), "fit")
    store_profile(key, model, synthetic_profile(true_model()))
    found = load_cached_profile(key)
    assert found is not None and found[0] == model
    other = dataclasses.replace(key, engine="abd/eager")
    assert load_cached_profile(other) is None


def test_the_markdown_report_has_every_batch_and_prefill_row() -> None:
    from sliceserve.bench.profile_report import profile_markdown

    truth = true_model()
    profile = synthetic_profile(truth)
    text = profile_markdown(profile, fit_latency_model(profile, "fit"))
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:9]] == [f"| {b}" for b in BATCHES]
    # batch 32: 75 ms + 0.002 ms x 32 rows x (256 + 1) tokens = 91.4 ms; 32 / 91.4 ms = 350 tok/s
    (row_32,) = [r for r in rows if r.startswith("| 32 |")]
    assert row_32.startswith("| 32 | 91.4 (") and "| 140.6 (" in row_32
    assert row_32.endswith("| 350 |")
    assert any(r.startswith("| prefill 512 |") for r in rows)
    assert any(r.startswith("| decode 16 x ctx 256 + prefill 256 |") for r in rows)


def test_a_calibration_on_a_busy_machine_is_used_but_not_cached(
        tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(profiler, "_load_average", lambda: 40.0)  # others hold the cores
    runner = tiny_runner(tiny_folder, num_kv_blocks=2200)
    model = latency_model_for(runner, "tiny")
    assert model.decode_ms[0] > 0
    assert not cached_profile_path(profile_key(runner, "tiny")).exists()


def test_the_decode_fit_stays_positive_on_noisy_points() -> None:
    # Random, inconsistent timings (a loaded machine): the fitted context term must never
    # eat a batch size's whole latency. Before the fit capped it at each batch's mean
    # point, about 1 in 9 of these gave a decode table at or below zero.
    import random

    from sliceserve.model.profile_fit import fit_decode

    rng = random.Random(0)
    for _ in range(500):
        points = {(b, c): rng.uniform(0.5, 50.0) for b in (1, 2, 4, 8) for c in (256, 512, 1024)}
        context_ms, base = fit_decode(points)
        assert context_ms >= 0 and min(base.values()) > 0, points

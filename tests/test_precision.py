"""The number format per CPU (sliceserve.model.cpu, sliceserve.model.precision): /proc/cpuinfo
parsed for the CPUs the engine lands on, dtype="auto" resolved from their features (faked
here), and a runner built with "auto" on a CPU without native bf16 never computing in bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sliceserve.model import cpu as cpu_module
from sliceserve.model import precision as precision_module
from sliceserve.model.cpu import CpuInfo, parse_cpuinfo
from sliceserve.model.precision import Precision, choose_precision

# First processor entries of /proc/cpuinfo, abridged (flags cut to what matters and a few).
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni
"""
XEON_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C
flags\t\t: fpu sse2 avx f16c fma avx2 avx512f avx512bw avx512vl avx512_bf16 amx_tile amx_bf16
"""
ZEN4 = """model name\t: AMD EPYC 9B14
flags\t\t: avx2 fma f16c avx512f avx512bw avx512vl avx512_bf16
"""
SKYLAKE_AVX512 = """model name\t: Intel(R) Xeon(R) CPU @ 2.00GHz
flags\t\t: avx2 fma f16c avx512f avx512bw avx512vl
"""
NEOVERSE_N1 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd0c
"""
NEOVERSE_V1 = """processor\t: 0
Features\t: fp asimd fphp asimdhp asimddp sve svebf16 i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


@pytest.mark.parametrize(("text", "arch", "model", "native"), [
    (EPYC_AVX2, "x86_64", "AMD EPYC 7B12", False),
    (XEON_AMX, "x86_64", "Intel(R) Xeon(R) Platinum 8481C", True),
    (ZEN4, "x86_64", "AMD EPYC 9B14", True),
    (SKYLAKE_AVX512, "x86_64", "Intel(R) Xeon(R) CPU @ 2.00GHz", False),
    (NEOVERSE_N1, "aarch64", "Arm CPU (implementer 0x41, part 0xd0c)", False),
    (NEOVERSE_V1, "aarch64", "Arm CPU (implementer 0x41, part 0xd40)", True),
])
def test_cpuinfo_is_parsed_and_native_bf16_read_from_the_flags(text: str, arch: str, model: str,
                                                               native: bool) -> None:
    info = parse_cpuinfo(text, arch)
    assert info.model == model
    assert info.native_bf16 is native
    assert set(info.flags) <= set(info.all_flags)
    described = info.describe()
    assert model in described and arch in described
    if arch == "x86_64":
        assert "avx2" in info.flags and "sse2" not in info.flags  # only the flags that matter
    block = info.as_dict()
    assert block["cpu"] == model and block["native_bf16"] is native


def test_auto_resolves_per_cpu_and_explicit_dtypes_are_kept() -> None:
    for text, expected in ((EPYC_AVX2, "float32"), (SKYLAKE_AVX512, "float32"),
                           (XEON_AMX, "bfloat16"), (ZEN4, "bfloat16")):
        p = choose_precision("auto", "none", "cpu", parse_cpuinfo(text, "x86_64"))
        assert (p.dtype, p.requested, p.quantization) == (expected, "auto", "none")
        assert p.reason
    for text, expected in ((NEOVERSE_N1, "float32"), (NEOVERSE_V1, "bfloat16")):
        assert choose_precision("auto", None, "cpu", parse_cpuinfo(text, "aarch64")).dtype \
            == expected
    epyc = parse_cpuinfo(EPYC_AVX2, "x86_64")
    for dtype in ("bfloat16", "float16", "float32"):
        assert choose_precision(dtype, "none", "cpu", epyc) == Precision(dtype, "none", dtype,
                                                                         "asked for")
    p = choose_precision("auto", "int8", "cpu", epyc)
    assert (p.dtype, p.quantization, p.label) == ("float32", "int8", "float32+int8")


def test_bad_formats_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="auto, bfloat16, float16, float32"):
        choose_precision("fp8")
    with pytest.raises(ValueError, match="none, int8"):
        choose_precision("auto", "int3")
    with pytest.raises(ValueError, match="for CPUs"):
        choose_precision("auto", "int8", "cuda")


def test_flags_can_be_overridden_for_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_module.FLAGS_ENV, "avx2 fma f16c")
    info = cpu_module.cpu_info()
    assert info.flags == ("avx2", "fma", "f16c") and not info.native_bf16
    assert choose_precision("auto").dtype == "float32"
    # the kernels are built for the CPU as it is, not as faked
    assert cpu_module.detected_cpu().all_flags != info.all_flags or not info.is_x86


def _fake_cpu(monkeypatch: pytest.MonkeyPatch, text: str) -> CpuInfo:
    info = parse_cpuinfo(text, "x86_64")
    monkeypatch.setattr(precision_module, "cpu_info", lambda: info)
    monkeypatch.setattr(cpu_module, "cpu_info", lambda: info)
    return info


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_auto_never_computes_in_bf16_without_native_bf16(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path,
                                                         quantization: str) -> None:
    """An AVX2 CPU (faked): every tensor the forward pass computes with is float32 (or int8
    weights with float32 scales), the KV cache too; the same model on an AMX CPU (faked)
    computes in bf16. Both generate."""
    from sliceserve.model.runner import ModelRunner, RunnerConfig
    from tests.tiny_models import make_tiny_model

    folder = make_tiny_model(tmp_path / "tiny", "llama", seed=1)
    for text, dtype in ((EPYC_AVX2, torch.float32), (XEON_AMX, torch.bfloat16)):
        _fake_cpu(monkeypatch, text)
        runner = ModelRunner(folder, RunnerConfig(num_kv_blocks=16, quantization=quantization))
        assert runner.config.dtype == "auto" and runner.dtype == dtype
        assert runner.precision.dtype == str(dtype).removeprefix("torch.")
        model = runner.model
        floats = [model.embed, model.norm, model.cos, model.sin, runner.cache.keys,
                  runner.cache.values]
        linears = [model.lm_head]
        for layer in model.layers:
            floats += [layer.input_norm, layer.post_norm]
            linears += [layer.qkv, layer.out, layer.gate_up, layer.down]
        assert {t.dtype for t in floats} == {dtype}
        for linear in linears:
            if quantization == "int8":
                # torch's int8 kernel is fast with bf16 activations only: a float32 model
                # hands it bf16 rows and gets float32 back
                assert linear.weight.dtype == torch.int8
                assert linear.scales.dtype == linear.compute_dtype == torch.bfloat16
            else:
                assert linear.weight.dtype == dtype
        from tests.engine_helpers import make_engine, request, run_to_completion

        out = run_to_completion(make_engine(runner), [request("a", [5, 6, 7, 8], 4)])
        assert len(out["a"]) == 4
        if dtype == torch.float32:
            assert runner.precision.reason.startswith("no native bf16")


def test_auto_on_cuda_keeps_bf16_or_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision("auto", "none", "cuda:0").dtype == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_precision("auto", "none", "cuda").dtype == "float16"
    assert choose_precision("float32", "none", "cuda").dtype == "float32"  # as asked

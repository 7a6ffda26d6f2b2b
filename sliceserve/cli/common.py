"""What the `sliceserve` commands share: the user-error type, argument checks and parsers,
the options several commands take, console and file output."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sliceserve.latency_model import list_presets as latency_presets
from sliceserve.workloads import ARRIVALS
from sliceserve.workloads import list_presets as workload_presets

EXIT_BAD_INPUT = 2

WORKLOAD_HELP = (f"a preset ({', '.join(workload_presets())}), a workload JSON file, or a "
                 ".jsonl trace (replayed at its own arrival times; --rate is then ignored)")
LATENCY_HELP = f"a preset ({', '.join(latency_presets())}) or a latency model JSON file"
OPTION_HELP = ("a policy option key=value (value parsed as JSON, else a string); "
               "policy.key=value applies to one policy only; repeatable")


class BadInput(ValueError):
    """A user error found by the CLI itself."""


# --- argument helpers ---

def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise BadInput(f"{name} must be a positive number, got {value:g}")


def _check_common(num_requests: int, seed: int, cv: float, arrival: str) -> None:
    if num_requests < 1:
        raise BadInput(f"--num-requests must be >= 1, got {num_requests}")
    if seed < 0:
        raise BadInput(f"--seed must be >= 0, got {seed}")
    _check_positive("--cv", cv)
    if arrival not in ARRIVALS:
        raise BadInput(f"--arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r} "
                       "(give a .jsonl --workload to replay a trace)")


def _parse_rates(text: str, option: str = "--rates") -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadInput(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not rates:
        raise BadInput(f"{option} needs at least one value")
    for rate in rates:
        _check_positive(f"every value in {option}", rate)
    return list(dict.fromkeys(rates))


def _parse_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise BadInput("--policies needs at least one policy name")
    return list(dict.fromkeys(names))


def parse_policy_options(items: Sequence[str], policies: Sequence[str]) -> dict[str, dict]:
    """`key=value` for every policy, `policy.key=value` for one; values parsed as JSON."""
    options: dict[str, dict[str, Any]] = {p: {} for p in policies}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--policy-option must look like key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target, dot, name = key.strip().rpartition(".")
        if dot and target not in options:
            raise BadInput(f"--policy-option {item!r} names policy {target!r}, which is not "
                           f"in this run ({', '.join(policies)})")
        for policy in [target] if dot else policies:
            options[policy][name] = value
    return options


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror}") from None
    print(f"wrote {path}", file=sys.stderr)


# --- options of several commands (`simulate`, `sweep`, `show`, `profile`, `run`) ---

WorkloadOpt = Annotated[str, typer.Option("--workload", "-w", help=WORKLOAD_HELP)]
PolicyOpt = Annotated[str, typer.Option("--policy", "-p", help="a registered policy name")]
ArrivalOpt = Annotated[str, typer.Option(help="poisson or gamma")]
CvOpt = Annotated[float, typer.Option(help="coefficient of variation of gamma arrivals")]
NumRequestsOpt = Annotated[int, typer.Option("--num-requests", "-n")]
SeedOpt = Annotated[int, typer.Option("--seed", "-s")]
PolicyOptionOpt = Annotated[list[str] | None,
                            typer.Option("--policy-option", help=OPTION_HELP)]
ClassDefaultsOpt = Annotated[str | None, typer.Option(
    help="for a trace: a workload whose classes give SLO defaults")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="write the plots here (PNG)")]
OutOpt = Annotated[Path | None, typer.Option(help="write the result JSON here")]
TableOpt = Annotated[bool, typer.Option(help="print the console table")]
LoadOpt = Annotated[float | None, typer.Option(
    "--load", help="arrival rate as a multiple of the device's capacity for the workload, "
    "estimated from the latency model (1 = saturation); instead of --rate")]
OnlineLatencyOpt = Annotated[bool, typer.Option(
    "--online-latency/--frozen-latency",
    help="correct the latency model online from the measured iterations (the default), or "
    "plan with the profile frozen")]


@contextlib.contextmanager
def progress_bar(total: int, desc: str) -> Iterator[Callable[[int, int, int], None]]:
    """A progress bar on stderr (requests done / total, running SLO attainment); yields
    `update(done, met, total)`. Silent when stderr is not a terminal."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="req", disable=None, file=sys.stderr,
              dynamic_ncols=True) as bar:
        def update(done: int, met: int, total: int) -> None:
            bar.total = total
            bar.set_postfix_str(f"met {met}/{done} ({100 * met / max(done, 1):.0f}%)",
                                refresh=False)
            bar.update(done - bar.n)

        yield update


def rates_for_loads(loads: Sequence[float], workload: str, latency_model: Any
                    ) -> tuple[list[float], dict[str, Any]]:
    """The arrival rates of `loads` (multiples of the device's estimated capacity for the
    workload) and the estimate, for the result files."""
    from sliceserve.workloads import is_trace_path, load_workload
    from sliceserve.workloads.load import estimate_capacity

    if is_trace_path(workload):
        raise BadInput("--load needs a generated workload, not a trace")
    for load in loads:
        _check_positive("--load", load)
    estimate = estimate_capacity(load_workload(workload), latency_model)
    print(f"capacity estimate for {workload} on {estimate.latency_model}: "
          f"{estimate.rate_rps:.3g} requests/s (batch {estimate.batch_size} at the tightest "
          f"TPOT {estimate.tightest_tpot_ms:.0f} ms)", file=sys.stderr)
    return [estimate.rate_for(load) for load in loads], estimate.to_dict()

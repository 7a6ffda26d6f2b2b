"""The `sliceserve` command line: simulate one run, sweep policies x rates, inspect results.

    sliceserve simulate --workload edge --policy orca --rate 1.5 --out run.json
    sliceserve sweep --workload paper --policies orca,slice --rates 0.2,0.4,0.8 \
        --out sweep.json --plot sweep.png
    sliceserve show sweep.json --plot sweep.png
    sliceserve workload edge --latency-model paper
    sliceserve profile --model smollm2-135m --out profile.json --plot profile.png
    sliceserve run --workload edge --policy slice --rate 0.4 -n 60 --out live.json \
        --trace-out edge.jsonl --latency-model profile.json
    sliceserve bench --base-url http://127.0.0.1:8000 --system vllm -w edge --load 1.5 \
        -n 200 --latency-model profile.json --out vllm.json
    sliceserve serve --port 8000 --api-key KEY       # the OpenAI-compatible server

Bad input ends with one line `error: ...` on stderr and exit status 2, never a traceback.

The package: `common` (checks, parsers, shared options, output), `sim_commands` (simulate,
sweep, show, workload, policies), `model_commands` (profile, run), `bench_commands` (bench),
`serve_command` (serve); this module builds the app from them and holds the entry point,
`main` (also `python -m sliceserve.cli`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from sliceserve.cli.bench_commands import bench
from sliceserve.cli.common import (
    EXIT_BAD_INPUT,
    LATENCY_HELP,
    OPTION_HELP,
    WORKLOAD_HELP,
    BadInput,
    parse_policy_options,
)
from sliceserve.cli.model_commands import profile, run
from sliceserve.cli.model_common import MODEL_DTYPES
from sliceserve.cli.serve_command import serve
from sliceserve.cli.sim_commands import METRICS, policies, show, simulate, sweep, workload

try:  # recent typer vendors click as typer._click; older versions raise click's own
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException, UsageError  # type: ignore[no-redef]

__all__ = [
    "EXIT_BAD_INPUT", "LATENCY_HELP", "METRICS", "MODEL_DTYPES", "OPTION_HELP", "WORKLOAD_HELP",
    "BadInput", "app", "main", "parse_policy_options",
    "simulate", "sweep", "show", "workload", "policies", "profile", "run", "bench", "serve",
]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="SLO-aware LLM serving for edge devices: simulate and compare "
                       "policies, profile a model on this device, serve workloads live.")

# Registered here, in this order (the order of `sliceserve --help`).
for _command in (simulate, sweep, show, workload, policies, profile, run, bench, serve):
    app.command()(_command)
del _command


# --- entry point ---

def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the app; bad input -> one `error:` line on stderr, exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="sliceserve", standalone_mode=False)
    except UsageError as e:
        where = f" (see: sliceserve {e.ctx.info_name} --help)" if e.ctx else ""
        if e.ctx is not None and e.ctx.parent is None:
            where = " (see: sliceserve --help)"
        print(f"error: {_one_line(e.format_message())}{where}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except ClickException as e:
        print(f"error: {_one_line(e.format_message())}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except (ValueError, OSError) as e:
        message = str(e)
        if isinstance(e, OSError) and e.strerror:
            message = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
        print(f"error: {_one_line(message)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(result if isinstance(result, int) else 0)

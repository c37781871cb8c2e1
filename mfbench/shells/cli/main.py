"""The ``mfbench`` command line. User mistakes end in a one-line message and exit code 2, never a traceback.

Exit codes: 0 done; 1 a regression, or a measurement or check that failed; 2 a usage or environment problem
(bad arguments, a results table that cannot be read or written), found before anything is measured where it
can be; 128 + the signal's number for a run stopped by SIGHUP (129), SIGINT (130) or SIGTERM (143), whose
rows measured so far are kept and flagged ``partial-run``; 141 when the reader of the output went away
(``| head``), a run's rows kept the same way.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Sequence

from mfbench.config import triton_cache_env
from mfbench.bench import session
from mfbench.core import providers, signals
from mfbench.shells.cli import common, machine
from mfbench.shells.cli.common import UsageError
from mfbench.shells.cli.parser import build_parser
from mfbench.store import results, snapshots


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0].replace("``", ""))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "dtype", "x") is None:
        args.dtype = "float16" if (args.device or common.default_device()).startswith("cuda") else "float32"
    if args.func is machine.cmd_flops and args.seq < 1:
        print("mfbench: error: --seq must be a positive integer", file=sys.stderr)
        return 2
    os.environ.update(triton_cache_env())  # the entry point chooses the process's Triton cache
    previous = signals.catch()
    try:
        for spec in getattr(args, "provider_module", []):
            try:
                providers.load_module(spec)
            except (providers.ProviderModuleError, ValueError) as exc:  # ValueError: a name registered twice
                raise UsageError(str(exc).splitlines()[0]) from None
        return args.func(args)
    except (UsageError, session.Refused, results.ResultsError, snapshots.SnapshotError) as exc:  # a damaged snapshot is not a regression (1)
        print(f"mfbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signals.tell("mfbench: interrupted")
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except BrokenPipeError:
        # the reader left (`mfbench show | head`); Python would complain again when flushing stdout at exit
        signals.quiet_stdout()
        return 128 + signal.SIGPIPE
    finally:
        signals.restore(previous)

"""``fastmc validate``: fastmc against the Geant4 reference tables of calibration/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fastmc.cli.common import UsageError, int_in, positive_float


def add_validate(sub) -> None:
    va = sub.add_parser("validate", help="compare fastmc with the Geant4 reference tables (calibration/)")
    va.add_argument("--suite", default="all", metavar="NAME",
                    help="eloss, deflection, decay or all (default: all)")
    va.add_argument("--report", type=Path, metavar="DIR", help="write DIR/summary.json and one PNG per observable")
    va.add_argument("--stat-scale", type=positive_float("--stat-scale"), default=1.0, metavar="F",
                    help="fastmc statistics = F x the table's n_events (default: 1)")
    va.add_argument("--seed", type=int_in("--seed", 0, 2**31 - 1), default=1, help="random seed (default: 1)")
    va.add_argument("--tables", type=Path, metavar="DIR", help="folder with eloss.h5, deflection.h5, decay.h5 "
                    "(default: calibration/ of the source tree; its tolerances.toml is used if present)")
    va.add_argument("--json", action="store_true", help="print the summary JSON to stdout (table goes to stderr)")


def cmd_validate(args) -> int:
    from fastmc.validate import SUITES, TableError, format_summary, format_timing, run_validation, write_report

    if args.suite != "all" and args.suite not in SUITES:
        raise UsageError(f"--suite = {args.suite!r}: unknown suite (known: {', '.join(SUITES)}, all)")
    if args.tables is not None and not args.tables.is_dir():
        raise UsageError(f"--tables = {str(args.tables)!r}: not a folder")
    if args.report is not None:
        if args.report.exists() and not args.report.is_dir():
            raise UsageError(f"--report = {str(args.report)!r}: exists and is not a folder")
        parent = args.report.parent if str(args.report.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"--report = {str(args.report)!r}: folder {str(parent)!r} does not exist")
    try:
        report = run_validation(args.suite, args.tables, stat_scale=args.stat_scale, seed=args.seed,
                                log=lambda s: print(s, file=sys.stderr))
    except TableError as err:
        raise UsageError(str(err)) from None
    out = sys.stderr if args.json else sys.stdout
    print(format_summary(report), file=out)
    print(format_timing(report), file=out)
    if args.report is not None:
        written = write_report(report, args.report)
        if written["note"]:
            print(f"fastmc: note: {written['note']}", file=sys.stderr)
        print(f"wrote {written['json']} and {len(written['png'])} PNG(s)", file=sys.stderr)
    if args.json:
        from fastmc.validate import jsonable

        print(json.dumps({"passed": report["passed"], "checks": jsonable(report["rows"]),
                          "timing": jsonable(report["timing"])}))
    return 0 if report["passed"] else 1

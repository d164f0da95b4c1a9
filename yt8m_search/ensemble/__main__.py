"""``python -m yt8m_search.ensemble RUN_DIR [--budget BYTES] [--budget-flops FLOPS] ...``: re-run the ensemble step of a
finished sweep (select, export ``RUN_DIR/ensemble.pt``, re-score in this process, record it in summary.json) and print
the members, the curve, the noise threshold, the best single model as shipped and the bundle's GAP on
the selection part (which chose it) and on the holdout part (which chose nothing), each labelled.

Exit status: 0 done, 1 the step failed (the message on the last line of stderr), 2 no such sweep.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from yt8m_search import results
from yt8m_search.bundle import BUNDLE_NAME
from yt8m_search.data import fs
from yt8m_search.ensemble.selection import DEFAULT_SAMPLE_VIDEOS
from yt8m_search.ensemble.step import run

__all__ = ["main"]


def _whole(text: str, unit: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of {unit}: {text!r}") from None
    if not (math.isfinite(value) and value > 0 and value == int(value)):
        raise argparse.ArgumentTypeError(f"the budget must be a positive whole number of {unit}, got {text!r}")
    return int(value)


def _parse_bytes(text: str) -> int:
    return _whole(text, "bytes")


def _parse_flops(text: str) -> int:
    return _whole(text, "FLOPs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m yt8m_search.ensemble",
        description="Choose, export and re-score the budgeted ensemble of a finished sweep.",
    )
    parser.add_argument("run_dir", help="the sweep's run folder (holding trials.csv and summary.json)")
    parser.add_argument("--budget", type=_parse_bytes, help="bytes (default: the sweep's budget, else 1e9)")
    parser.add_argument("--budget-flops", type=_parse_flops,
                        help="the members' forward FLOPs per video together (default: the sweep's, else none)")
    parser.add_argument("--output", help=f"bundle path (default: RUN_DIR/{BUNDLE_NAME})")
    parser.add_argument("--validation", help="validation data to re-score with (default: from summary.json)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="threads scoring moves (default: up to 4)")
    parser.add_argument("--max-videos", type=int, default=DEFAULT_SAMPLE_VIDEOS,
                        help="select on a seeded subsample of this many selection videos when there are more "
                             f"(default {DEFAULT_SAMPLE_VIDEOS:,}; 0: all)")
    parser.add_argument("--seed", type=int, default=0, help="the subsample's seed")
    return parser


def _figure(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.5f}"


def _print(entry: results.EnsembleSummary) -> None:
    print(f"{'trial':<24} {'model':<18} {'weight':>6} {'MB':>10} {'GAP':>8}")
    for trial, model, weight, size, gap in zip(entry.members, entry.models, entry.weights, entry.member_bytes,
                                               entry.member_gaps):  # fmt: skip
        print(f"{trial:<24} {model:<18} {weight:>6} {size / 1e6:>10.2f} {gap if gap is not None else math.nan:>8.4f}")
    print("curve (bytes, selection GAP): " + ", ".join(f"({s:,}, {g:.4f})" for s, g in entry.curve))
    print(f"selection: {entry.method}, {entry.bags} bag(s), a step kept when its gain exceeds {entry.noise_z:.4g} "
          f"bootstrap sds ({entry.resamples} resamples): median sd {_figure(entry.noise_sd)}, threshold "
          f"{_figure(entry.min_gain)}, {entry.noise_rejections} of {entry.noise_tests} steps refused as noise")
    print(f"selection videos: {entry.sample_videos:,} of {entry.sample_of:,}; sparse GAP "
          f"{_figure(entry.selection_gap)}, standard error {_figure(entry.selection_gap_se)} against all "
          f"(bootstrap sd {_figure(entry.selection_gap_sd)})")
    single = entry.best_single
    print(f"best single model as shipped: trial {single.get('trial_id')}, selection GAP {_figure(single.get('gap'))}, "
          f"holdout GAP {_figure(single.get('holdout_gap'))}")
    for note in entry.notes:
        print(f"note: {note}")
    flops_budget = f" (budget {entry.budget_flops:,})" if entry.budget_flops else ""
    print(f"ensemble: {len(entry.members)} members, selection GAP {_figure(entry.gap)} "
          f"({entry.validation_videos} videos; sparse estimate {_figure(entry.selection_gap)}), holdout GAP "
          f"{_figure(entry.holdout_gap)} "
          f"({entry.holdout_videos} videos), {entry.size_bytes:,} bytes of members, {entry.file_bytes:,} "
          f"bytes on disk, budget {entry.budget_bytes:,}; {entry.flops:,} FLOPs per video{flops_budget} "
          f"-> {entry.path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if not fs.exists(fs.join(args.run_dir, results.TRIALS_FILE)):
            print(f"error: {args.run_dir} is not a finished sweep (no trials.csv)", file=sys.stderr)
            return 2
        entry = run(args.run_dir, args.budget, budget_flops=args.budget_flops, output=args.output,
                    validation=args.validation, device=args.device, batch_size=args.batch_size,
                    workers=args.workers, progress=True, max_videos=args.max_videos or None, seed=args.seed,
                    log=log)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a CLI: the message on the last line, exit 1
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    _print(entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())

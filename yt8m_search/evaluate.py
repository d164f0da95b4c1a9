"""Validation metrics of an ensemble bundle: GAP@20, Hit@1, PERR and the starter's sparse mAP.

Streams the data through ``data.inference.iter_batches`` (TFRecord or Parquet, local or s3://) into a
``MetricAccumulator``, so memory stays O(videos x 20).

Usage::

    python -m yt8m_search.evaluate BUNDLE DATA [DATA ...] [--batch-size N] [--device cpu|cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from yt8m_search.bundle import evaluate_bundle, load_bundle, resolve_device
from yt8m_search.data.inference import data_files, iter_batches
from yt8m_search.predict import common_arguments

__all__ = ["evaluate_bundle", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yt8m_search.evaluate",
                                     description="Print GAP@20, Hit@1, PERR and mAP of a bundle on labelled data.")
    common_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    try:
        bundle = load_bundle(args.bundle, resolve_device(args.device))
        data_files(args.data)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        on_cpu = next(bundle.parameters()).device.type == "cpu"
        batches = iter_batches(args.data, batch_size=args.batch_size, num_classes=bundle.num_classes,
                               skip_bad=args.skip_bad, progress=not args.no_progress, desc="evaluate",
                               dequantize=on_cpu)
        result = evaluate_bundle(bundle, batches)
    except Exception as err:  # noqa: BLE001 - a CLI: the message on the last line, exit 1
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(f"videos: {result['videos']}")
        print(f"GAP@20: {result['gap']:.6f}")
        print(f"Hit@1:  {result['hit_at_one']:.6f}")
        print(f"PERR:   {result['perr']:.6f}")
        print(f"mAP:    {result['map']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kaggle submission from an ensemble bundle (spec §9).

DATA is frame-level TFRecord files, Parquet shards, or folders or globs of them, local or s3://, read
by ``yt8m_search.data.inference.iter_batches``: a TFRecord file and its Parquet conversion give
identical batches and identical predictions. Corrupt input raises ``CorruptRecordError`` naming the
file and record; with ``--skip-bad`` the record (TFRecord) or the unreadable rest of the file
(Parquet) is skipped and reported.

Output: ``VideoId,LabelConfidencePairs`` then per video ``<id>,<class> <score> ...``, the top 20
classes by score descending, ``"%i %g"`` per pair, written atomically.

Usage::

    python -m yt8m_search.predict BUNDLE DATA [DATA ...] --out submission.csv [--batch-size N]
        [--device cpu|cuda] [--skip-bad]
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence

import torch

from yt8m_search.bundle import Bundle, load_bundle, resolve_device
from yt8m_search.data import fs
from yt8m_search.data.inference import DEFAULT_BATCH_SIZE, data_files, iter_batches

__all__ = ["HEADER", "TOP_K", "common_arguments", "format_line", "main", "predict"]

HEADER = "VideoId,LabelConfidencePairs"
TOP_K = 20


def format_line(video_id: str, classes: Sequence[int], scores: Sequence[float]) -> str:
    """One submission line: ``<id>,<class> <score> ...`` with ``"%i %g"`` per pair (the starter's)."""
    return video_id + "," + " ".join("%i %g" % (int(c), float(s)) for c, s in zip(classes, scores))


def predict(
    bundle: Bundle,
    data: str | Sequence[str],
    out: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    top_k: int = TOP_K,
    skip_bad: bool = False,
    progress: bool = False,
) -> int:
    """Write the Kaggle submission of ``bundle`` (``bundle.load_bundle``) over DATA to ``out``
    (atomically: nothing appears on error). Returns the number of videos."""
    device = next(bundle.parameters()).device
    count = 0
    with fs.atomic_output(out) as f:
        f.write((HEADER + "\n").encode())
        batches = iter_batches(data, batch_size=batch_size, num_classes=bundle.num_classes, skip_bad=skip_bad,
                               progress=progress, desc="predict", dequantize=device.type == "cpu")
        with torch.inference_mode():
            for batch in batches:
                batch = batch.to(device)
                probs = bundle.predict(batch.features, batch.mask)
                top = torch.topk(probs, k=min(top_k, probs.shape[1]), dim=1)
                classes, scores = top.indices.cpu().numpy(), top.values.cpu().numpy()
                text = io.StringIO()
                for video_id, c, s in zip(batch.ids, classes, scores):
                    text.write(format_line(video_id, c, s) + "\n")
                f.write(text.getvalue().encode())
                count += len(batch.ids)
    return count


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments ``predict`` and ``evaluate`` share."""
    parser.add_argument("bundle", help="the ensemble bundle (python -m yt8m_search.ensemble writes it)")
    parser.add_argument("data", nargs="+", help="TFRecord files, Parquet shards, folders or globs (local or s3://)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--skip-bad", action="store_true", help="skip and report corrupt records")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yt8m_search.predict",
                                     description="Write a Kaggle submission (top 20 classes per video).")
    common_arguments(parser)
    parser.add_argument("--out", default="submission.csv", help="output CSV, local or s3:// (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    try:
        device = resolve_device(args.device)
        bundle = load_bundle(args.bundle, device)
        data_files(args.data)  # missing inputs: exit 2 before any work
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        count = predict(bundle, args.data, args.out, batch_size=args.batch_size, skip_bad=args.skip_bad,
                        progress=not args.no_progress)
    except Exception as err:  # noqa: BLE001 - a CLI: the message on the last line, exit 1
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {count} videos to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The main command: ``python -m yt8m_search.run SPACE.yaml [key=value ...]``.

Exit codes: 0 done; 2 invalid space file or arguments (every error listed, nothing started);
1 anything else, with the cause in one line at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from yt8m_search import config
from yt8m_search.data.prepare import DataPaths, synthetic_dataset


def prepare_data(data: config.DataSpec, progress: bool = True) -> DataPaths:
    """The run's Parquet shards: the configured paths, or the synthetic set generated on first use."""
    if data.synthetic is None:
        assert data.train and data.validation  # guaranteed by config validation
        return DataPaths(train=data.train, validation=data.validation)
    s = data.synthetic
    return synthetic_dataset(
        s.cache,
        s.key(),
        train_videos=s.train_videos,
        validation_videos=s.validation_videos,
        shards=s.shards,
        seed=s.seed,
        num_classes=s.num_classes,
        max_frames=s.max_frames,
        progress=progress,
    )


def summarize_loader(paths: DataPaths, batch_size: int = 160, num_classes: int = 3862) -> None:
    """Stream the training shards through the Ray Data loader once and print what it yields."""
    import numpy as np
    import ray

    from yt8m_search.data.loading import iter_video_batches, read_videos

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        for split, where in (("train", paths.train), ("validation", paths.validation)):
            started = time.perf_counter()
            videos, frames, labels, shapes = 0, [], [], set()
            for batch in iter_video_batches(read_videos(where), batch_size=batch_size, num_classes=num_classes):
                videos += len(batch)
                frames.append(batch.num_frames.numpy())
                labels.append(batch.labels.sum(dim=1).numpy())
                shapes.add(tuple(batch.features.shape[1:]))
            seconds = time.perf_counter() - started
            n, k = np.concatenate(frames), np.concatenate(labels)
            longest = max(s[0] for s in shapes)
            print(f"{split:>10}: {videos} videos from {where}")
            print(f"{'':>10}  batches of features [B<={batch_size}, T<={longest}, {shapes.pop()[1]}] float32, "
                  f"mask [B, T], num_frames [B], labels [B, {num_classes}]")
            print(f"{'':>10}  frames per video: min {n.min()}, median {int(np.median(n))}, max {n.max()}; "
                  f"labels per video: mean {k.mean():.2f}, max {int(k.max())}")
            print(f"{'':>10}  loader throughput: {videos / seconds:,.0f} videos/s ({seconds:.1f} s)")
    finally:
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yt8m_search.run", description=__doc__.split("\n")[0])
    parser.add_argument("space", help="the space file (YAML)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides of the space file")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return 2 if exit_.code else 0
    try:
        spec = config.load(args.space, args.overrides)
    except config.SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        paths = prepare_data(spec.data)
        summarize_loader(paths)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    except Exception as err:  # the last line names the cause
        import traceback

        traceback.print_exc()
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

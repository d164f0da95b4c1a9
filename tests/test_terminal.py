"""A clean terminal: during a sweep the frameworks' output goes to the run's log file; the live line,
notices and one line per error (with its cause) reach the terminal."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from yt8m_search import logs
from yt8m_search.search.live import LiveView

# emits what a sweep's driver sees, from every source, inside logs.to_file
EMITTER = textwrap.dedent('''
    import logging, os, sys, warnings
    import optuna, ray  # first, as in the sweep: they set their loggers up on import
    from yt8m_search import logs

    class RayTaskError(Exception):
        pass

    print("before", flush=True)
    with logs.to_file(sys.argv[1]) as path:
        logs.say("[00:00] running 1 | best GAP -")
        logging.getLogger("ray.tune").warning("on_trial_result took 16.2 s, which may be a performance bottleneck")
        logging.getLogger("ray").info("Started a local Ray instance.")
        optuna.logging.get_logger("optuna").info("A new study created in memory with name: smoke")
        logging.getLogger("wandb").warning("wandb is offline")
        warnings.warn("a deprecation")
        print("Configuration for experiment tune", flush=True)
        os.write(2, b"[E core_worker.cc:2465] Actor with class name: '_TrialLoggingActor'\\n")  # Ray's C++ core
        try:
            raise RayTaskError("\\x1b[36mray::ImplicitFunc.train()\\x1b[39m (pid=1)\\nTraceback (most recent call):"
                               "\\n  File trial.py, line 58"
                               "\\nTypeError: fit() got an unexpected keyword argument 'callbacks'")
        except RayTaskError as err:
            logging.getLogger("ray.tune").error("Trial task failed for trial run_trial_bfa94982", exc_info=err)
        logging.getLogger("yt8m_search.tracking").error("SweepWandbCallback.on_trial_result failed")
        print("path", path, file=sys.stderr)
    print("after", flush=True)
    print("after, err", file=sys.stderr, flush=True)
    try:  # an exception leaves the block with the terminal restored, for the command to report it
        with logs.to_file(sys.argv[1]):
            raise RuntimeError("the sweep broke")
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
    assert logs.log_file() is None and not logging.getLogger().handlers
''')


def test_framework_output_goes_to_the_log_and_errors_to_the_terminal(tmp_path: Path) -> None:
    log = tmp_path / "run" / "run.log"
    out = subprocess.run([sys.executable, "-c", EMITTER, str(log)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["before", "[00:00] running 1 | best GAP -", "after"]
    assert out.stderr.splitlines() == [
        f"error: Trial task failed for trial run_trial_bfa94982: TypeError: fit() got an unexpected keyword "
        f"argument 'callbacks' (details in {log})",
        f"error: SweepWandbCallback.on_trial_result failed (details in {log})",
        "after, err",
        "error: the sweep broke",
    ]
    text = log.read_text()
    for line in ("[00:00] running 1", "performance bottleneck", "Started a local Ray instance", "A new study created",
                 "wandb is offline", "a deprecation", "Configuration for experiment", "core_worker.cc:2465",
                 "File trial.py, line 58", "Trial task failed", "on_trial_result failed", f"path {log}"):
        assert line in text, line
    assert "before" not in text and "after" not in text


def test_an_error_line_names_the_cause() -> None:
    try:
        raise KeyError("groups")
    except KeyError as err:
        record = logging.LogRecord("ray.tune", logging.ERROR, __file__, 1, "Trial %s failed\nmore", ("t1",),
                                   (KeyError, err, err.__traceback__))
    assert logs.one_line(record) == "Trial t1 failed: KeyError: 'groups'"
    plain = logging.LogRecord("optuna", logging.ERROR, __file__, 1, "\x1b[31mstudy lost\x1b[0m", None, None)
    assert logs.one_line(plain) == "study lost"


def test_without_a_log_the_terminal_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert logs.log_file() is None and logs.terminal() is sys.stdout and logs.terminal(err=True) is sys.stderr
    logs.say("hello")
    assert capsys.readouterr().out == "hello\n"


def test_live_view_says_its_line_or_writes_to_its_stream(capsys: pytest.CaptureFixture[str]) -> None:
    class Trial:
        status, last_result = "RUNNING", {"epoch": 1, "gap_best": 0.25}

    LiveView(epochs=3).on_experiment_end(trials=[Trial()])
    assert capsys.readouterr().out.endswith("running 1 | complete 0 | stopped 0 | error 0 | "
                                            "pending 0 | best GAP 0.2500\n")
    stream = io.StringIO()
    LiveView(epochs=3, stream=stream).on_experiment_end(trials=[Trial()])
    assert "best GAP 0.2500" in stream.getvalue() and capsys.readouterr().out == ""

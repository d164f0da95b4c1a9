"""Per-trial training: one worker loop, run by ``fit`` in the calling process (one worker) or on
every worker of a TorchTrainer (DDP).

- ``settings``: ``TrainConfig``, the trial settings (``config.TrialSettings``) plus the model;
- ``recipe``: the NeXtVLAD recipe's pieces (schedule, per-parameter clipping, Adam with L2 on the
  classifier, one step, autocast, seeding);
- ``evaluation``: evaluation over all workers (exact global GAP, the measured ``latency_ms``) and the
  averaging of the last epochs;
- ``checkpoints``: epoch checkpoints and the state a restarted run resumes from;
- ``session``: where the loop runs (a Ray Train worker, or the calling process) and where its reports
  and checkpoints go;
- ``loop``: the worker loop, one epoch at a time; the best epoch goes to ``best/`` through ``artifacts``;
- ``driver``: ``fit``, its ``TrialResult``, and ``relay_reports`` (a TorchTrainer's reports to the
  caller's thread).
"""

from yt8m_search.train.checkpoints import CHECKPOINT_FILE, epoch_checkpoints
from yt8m_search.train.driver import LOCAL_TRAIN_ENV, TRAIN_ENV, TrialResult, fit, relay_reports
from yt8m_search.train.evaluation import Evaluation, evaluate
from yt8m_search.train.loop import StepHooks, train_loop_per_worker
from yt8m_search.train.recipe import clip_per_parameter_, learning_rate, make_optimizer, train_step
from yt8m_search.train.settings import TrainConfig

__all__ = [
    "CHECKPOINT_FILE",
    "LOCAL_TRAIN_ENV",
    "TRAIN_ENV",
    "Evaluation",
    "StepHooks",
    "TrainConfig",
    "TrialResult",
    "clip_per_parameter_",
    "epoch_checkpoints",
    "evaluate",
    "fit",
    "learning_rate",
    "make_optimizer",
    "relay_reports",
    "train_loop_per_worker",
    "train_step",
]

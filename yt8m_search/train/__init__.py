"""Per-trial training on Ray Train: one worker loop (DDP), run by ``fit`` through a TorchTrainer.

- ``settings``: ``TrainConfig``, the trial settings (``config.TrialSettings``) plus the model;
- ``recipe``: the NeXtVLAD recipe's pieces (schedule, per-parameter clipping, Adam with L2 on the
  classifier, one step, autocast, seeding);
- ``evaluation``: evaluation over all workers (exact global GAP) and the averaging of the last epochs;
- ``checkpoints``: epoch checkpoints and the state a restarted run resumes from;
- ``loop``: the worker loop, one epoch at a time; the best epoch goes to ``best/`` through ``artifacts``;
- ``driver``: ``fit`` and its ``TrialResult``.
"""

from yt8m_search.train.checkpoints import CHECKPOINT_FILE, epoch_checkpoints
from yt8m_search.train.driver import LOCAL_TRAIN_ENV, TRAIN_ENV, TrialResult, fit
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
    "train_loop_per_worker",
    "train_step",
]

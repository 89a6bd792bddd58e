"""The one resolve step: a method configuration at a frame sampling on an experiment -> a ``Job`` with its naming
columns and ``config_id``. Every command (``ablate``, ``run``, ``bench``, ``flops``) names its rows this way."""

from __future__ import annotations

from dataclasses import dataclass

from tokbench.config import MethodConfig
from tokbench.errors import TokbenchError
from tokbench.models.zoo import LoadedModel
from tokbench.policies import policy
from tokbench.results import config_id

# options added after result folders were published: left out of a row's identity while at their default, so the
# config_id of every configuration that does not use them is what it was (earlier folders keep resuming)
LATER_OPTIONS = {"drop_schedule": "", "propagation": "none"}


@dataclass(frozen=True)
class Job:
    """A resolved run specification: one method configuration at one frame sampling on one experiment.

    ``identity`` holds the row's naming columns (resolved options, sampling, model, weights, data, limits);
    ``error`` is set when the engine refuses the configuration (its row carries the error, nothing runs).
    """

    config: MethodConfig
    sampling: int
    identity: dict
    config_id: str
    error: str = ""

    @property
    def dense(self) -> bool:
        return not policy(self.config.policy).prunes


def resolve(loaded: LoadedModel, config: MethodConfig, sampling: int, experiment: dict) -> Job:
    """The one resolve step: the engine's resolved options (never ``auto``) + sampling + ``experiment`` columns.

    A configuration the engine refuses is resolved as far as it goes and carries the error.
    """
    error = ""
    try:
        options = loaded.engine(config).resolved.as_dict()
    except TokbenchError as err:
        options = config.resolve(loaded.task(config).dense, strict=False).as_dict()
        error = f"{type(err).__name__}: {err}"
    options = {k: v for k, v in options.items() if k not in LATER_OPTIONS or LATER_OPTIONS[k] != v}
    identity = options | {"sampling": sampling} | experiment
    return Job(config, sampling, identity, config_id(identity), error)

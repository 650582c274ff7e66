"""Trial ids that a resumed sweep gives again.

Ray Tune's SearchGenerator (HyperOpt and the other model-based searchers) names each new trial
with a random id. A trial created after the sweep's last experiment snapshot is lost with the
driver; on ``--resume`` the searcher, restored from that snapshot, suggests its config again but
under a new id, so the trial would miss its MLflow run and its Train checkpoints (named after the
id) and train from scratch. Here ids count instead (``prefix_00001``, as BasicVariantGenerator's
do), and the count is part of the snapshot: the trial comes back under the id it had.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.experiment.config_parser import _create_trial_from_spec
from ray.tune.search import Searcher, SearchGenerator
from ray.tune.search.variant_generator import _resolve_nested_dict, format_vars
from ray.tune.utils.util import flatten_dict, merge_dicts


class CountedTrialIds(SearchGenerator):
    """Ray 2.60's SearchGenerator, but for the id it gives a new trial."""

    def __init__(self, searcher: Searcher) -> None:
        super().__init__(searcher)
        self._id_prefix = f"{uuid.uuid4().hex[:5]}_"  # one sweep's ids apart from another's

    def create_trial_if_possible(self, experiment_spec: dict[str, Any]) -> Trial | None:
        trial_id = f"{self._id_prefix}{self._counter + 1:05d}"
        suggested = self.searcher.suggest(trial_id)
        if suggested == Searcher.FINISHED:
            self._finished = True
            return None
        if suggested is None:  # nothing now (e.g. the concurrency limit): the id stays unused
            return None
        spec = copy.deepcopy(experiment_spec)
        spec["config"] = merge_dicts(spec["config"], copy.deepcopy(suggested))
        self._counter += 1
        tag = f"{self._counter}_{format_vars(_resolve_nested_dict(spec['config']))}"
        trial: Trial = _create_trial_from_spec(
            spec,
            self._parser,
            evaluated_params=flatten_dict(suggested),
            experiment_tag=tag,
            trial_id=trial_id,
        )
        return trial

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "id_prefix": self._id_prefix}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._id_prefix = state["id_prefix"]

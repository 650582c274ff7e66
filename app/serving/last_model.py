"""The last model a replica loaded, kept on its node's disk: a replica that starts while the
registry is unreachable serves it (status ``degraded``) instead of nothing, and catches up when
the registry answers again.

Kept per setting (the URI the settings name: an alias, a pinned version or a pinned run), in
$RAYVISION_SERVING_CACHE (default ~/.cache/rayvision/served-models), which the replicas of a
node share. Only the project's own files: safetensors weights, the spec, the model's reference
and metrics as JSON; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import torch

from app.inference import Predictor, save_model_files
from app.model_registry import ModelRef
from app.serving.served_model import ServedModel
from app.serving.settings import ModelSettings
from app.serving.source import settings_uri

logger = logging.getLogger("ray.serve")

CACHE_ENV = "RAYVISION_SERVING_CACHE"
SERVED_FILE = "served.json"


def cache_root(env: Mapping[str, str] = os.environ) -> Path:
    default = Path.home() / ".cache" / "rayvision" / "served-models"
    return Path(env.get(CACHE_ENV) or default)


class LastModel:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, settings: ModelSettings) -> Path:
        return self.root / hashlib.sha256(settings_uri(settings).encode()).hexdigest()[:20]

    def keep(self, settings: ModelSettings, served: ServedModel) -> None:
        """Write ``served`` as the last model loaded for ``settings``; a failure is logged, never
        raised (the replica serves either way)."""
        folder = self.folder(settings)
        staging = folder.with_name(f"{folder.name}.{os.getpid()}.new")
        try:
            shutil.rmtree(staging, ignore_errors=True)
            state = {
                k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
                for k, v in served.predictor.model.state_dict().items()
            }
            save_model_files(state, served.predictor.spec, staging)
            meta = {
                "source": asdict(served.source),
                "metrics": served.metrics,
                "lineage": served.lineage,
            }
            (staging / SERVED_FILE).write_text(json.dumps(meta))
            # Swap the folders: a reader sees the old model or the new one, never half of one.
            retired = folder.with_name(f"{folder.name}.{os.getpid()}.old")
            if folder.exists():
                folder.rename(retired)
            staging.rename(folder)
            shutil.rmtree(retired, ignore_errors=True)
        except OSError as exc:  # a full disk, or another replica of the node writing the same
            logger.warning("could not keep %s on disk: %s", served.source.pinned_uri, exc)
            shutil.rmtree(staging, ignore_errors=True)

    def load(self, settings: ModelSettings, device: torch.device) -> ServedModel | None:
        """The last model kept for ``settings``, validated like any load; None when none is."""
        folder = self.folder(settings)
        if not (folder / SERVED_FILE).is_file():
            return None
        meta = json.loads((folder / SERVED_FILE).read_text())
        served = ServedModel(
            ModelRef(**meta["source"]),
            Predictor.from_folder(folder, device),
            {k: float(v) for k, v in meta["metrics"].items()},
            datetime.now(UTC).isoformat(timespec="seconds"),
            meta.get("lineage") or {},  # a model kept before lineage was kept has none
        )
        served.validate()
        return served

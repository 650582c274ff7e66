"""Tune state is restored only if a sweep signed it: every file Ray would unpickle is checked,
and a tampered, added or unsigned one is refused before anything is loaded (and nothing in
storage changes). The snapshots here are written by Ray's own code for callbacks' state."""

from __future__ import annotations

import json
import pickle
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.fs
import pytest
from ray.tune.callback import CallbackList
from ray.tune.utils.util import _atomic_save

from app.config import ConfigError
from app.errors import UntrustedStateError
from app.tune import state_signing
from app.tune.rungs import RungKeeper, asha
from app.tune.state_signing import (
    KEY_ENV,
    MANIFEST,
    StateSigner,
    seal,
    sign_new_sweep,
    state_key,
    verify_sweep_state,
)

SESSION = "2026-01-02_03-04-05"
STATE = f"experiment_state-{SESSION}.json"


class Marker:
    """A pickle that, once loaded, creates a file: what loading a tampered state would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "k" * 40
    monkeypatch.setenv(KEY_ENV, value)
    return value


class Sweep:
    """A sweep's experiment folder in storage and its driver's staging folder, written and
    uploaded the way Ray does it: ``tuner.pkl`` straight to storage, each snapshot into the
    staging folder (trials, searcher, then the callbacks' file, asking the signer on the way),
    then the whole staging folder copied to storage."""

    def __init__(self, root: Path) -> None:
        self.storage = root / "storage" / "sweep"
        self.staging = root / "staging"
        self.storage.mkdir(parents=True)
        self.staging.mkdir()
        (self.storage / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
        (self.storage / ".validate_storage_marker").write_bytes(b"")
        sign_new_sweep(str(self.storage))
        context = SimpleNamespace(
            experiment_driver_staging_path=str(self.staging),
            experiment_fs_path=str(self.storage),
            storage_filesystem=pyarrow.fs.LocalFileSystem(),
        )
        self.signer = StateSigner()
        self.signer.on_step_begin(0, [SimpleNamespace(storage=context)])
        self.callbacks = CallbackList([RungKeeper(asha(2, 1, 2)), self.signer])

    def snapshot(self, step: int) -> None:
        (self.staging / STATE).write_text(json.dumps({"trial_data": [], "step": step}))
        _atomic_save({"step": step}, str(self.staging), f"search_gen_state-{SESSION}.json", "t")
        (self.staging / "trial_1").mkdir(exist_ok=True)
        (self.staging / "trial_1" / "error.pkl").write_bytes(pickle.dumps(RuntimeError(step)))
        (self.staging / "trial_1" / "params.pkl").write_bytes(b"not read on a restore")
        self.callbacks.save_to_dir(str(self.staging), session_str=SESSION)

    def upload(self, *names: str) -> None:
        """Copy the staging folder to storage (only ``names``: an upload cut short)."""
        if not names:
            shutil.copytree(self.staging, self.storage, dirs_exist_ok=True)
        for name in names:
            (self.storage / name).parent.mkdir(exist_ok=True)
            shutil.copy(self.staging / name, self.storage / name)

    def verify(self) -> None:
        verify_sweep_state(str(self.storage))

    def contents(self) -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted(self.storage.rglob("*")) if p.is_file()}


@pytest.fixture
def sweep(tmp_path: Path) -> Sweep:
    made = Sweep(tmp_path)
    made.snapshot(1)
    made.upload()
    return made


def refused(sweep: Sweep, match: str) -> None:
    before = sweep.contents()
    with pytest.raises(UntrustedStateError, match=match):
        sweep.verify()
    assert sweep.contents() == before  # a refusal writes nothing


def test_the_state_a_sweep_signed_verifies(sweep: Sweep) -> None:
    assert (sweep.storage / f"callback-states-{SESSION}.pkl").exists()  # the rungs are in it
    sweep.verify()
    sweep.snapshot(2)  # the next snapshot carries tuner.pkl's signature on
    sweep.upload()
    sweep.verify()


def test_an_upload_cut_short_still_verifies(sweep: Sweep) -> None:
    """The driver killed half-way through uploading a snapshot: storage holds new and previous
    files side by side, all of them signed."""
    sweep.snapshot(2)
    sweep.upload(MANIFEST, STATE)
    sweep.verify()


def test_a_changed_byte_is_refused(sweep: Sweep) -> None:
    path = sweep.storage / STATE
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    refused(sweep, f"{STATE} does not match its signature")


def test_a_malicious_tuner_pickle_is_refused_unloaded(sweep: Sweep, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    (sweep.storage / "tuner.pkl").write_bytes(pickle.dumps(Marker(marker)))
    refused(sweep, "tuner.pkl does not match its signature")
    assert not marker.exists()


@pytest.mark.parametrize(
    "name", ["searcher-state-2099-01-01_00-00-00.pkl", "experiment_state-9999.json", "t/error.pkl"]
)
def test_an_added_state_file_is_refused(sweep: Sweep, name: str) -> None:
    (sweep.storage / name).parent.mkdir(exist_ok=True)
    (sweep.storage / name).write_bytes(pickle.dumps({"x": 1}))
    refused(sweep, f"{name} is unsigned")


def test_a_trials_error_pickle_is_checked(sweep: Sweep) -> None:
    (sweep.storage / "trial_1" / "error.pkl").write_bytes(pickle.dumps(RuntimeError("other")))
    refused(sweep, "trial_1/error.pkl does not match")


def test_a_file_tune_never_unpickles_is_not_checked(sweep: Sweep) -> None:
    (sweep.storage / "trial_1" / "params.pkl").write_bytes(b"changed")
    (sweep.storage / "trial_1" / "result.json").write_text("{}")
    (sweep.storage / ".tmp-experiment_state-x.json").write_text("{}")
    sweep.verify()


def test_a_missing_manifest_is_refused(sweep: Sweep) -> None:
    (sweep.storage / MANIFEST).unlink()
    refused(sweep, "unsigned")


def test_a_manifest_signing_a_tampered_file_is_refused(sweep: Sweep) -> None:
    path = sweep.storage / "tuner.pkl"
    path.write_bytes(pickle.dumps({"tuner": 2}))
    manifest = json.loads((sweep.storage / MANIFEST).read_text())
    manifest["files"]["tuner.pkl"] = [state_signing._digest(path.read_bytes())]
    (sweep.storage / MANIFEST).write_text(json.dumps(manifest))
    refused(sweep, f"{MANIFEST} does not verify")


def test_state_signed_with_another_key_is_refused(
    sweep: Sweep, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "o" * 40)
    refused(sweep, "signed with another key")


def test_a_malicious_callback_states_pickle_is_refused_unloaded(
    sweep: Sweep, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    path = sweep.storage / f"callback-states-{SESSION}.pkl"
    path.write_bytes(pickle.dumps({0: Marker(marker)}))
    refused(sweep, "refusing callback-states")
    assert not marker.exists()


@pytest.mark.parametrize(
    "states",
    [
        {0: {"scheduler": b"unsealed"}},
        {0: {**seal({"scheduler": b"x"}), "scheduler": b"y"}},
        ["not", "a", "table"],
    ],
)
def test_callback_states_that_no_sweep_sealed_are_refused(sweep: Sweep, states: Any) -> None:
    (sweep.storage / f"callback-states-{SESSION}.pkl").write_bytes(pickle.dumps(states))
    refused(sweep, "refusing callback-states")


def test_the_rungs_come_back_only_sealed() -> None:
    keeper = RungKeeper(asha(2, 1, 2))
    state = keeper.get_state()
    RungKeeper(asha(2, 1, 2)).set_state(state)
    with pytest.raises(UntrustedStateError):
        RungKeeper(asha(2, 1, 2)).set_state({**state, "scheduler": pickle.dumps({"x": 1})})


def test_without_the_variable_a_private_key_file_is_made_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    first = state_key()
    path = tmp_path / ".cache" / "rayvision" / "tune-state.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert state_key() == first and len(first) >= 32
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no draft left behind
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="open to other users"):
        state_key()


def test_a_short_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ConfigError, match=KEY_ENV):
        state_key()

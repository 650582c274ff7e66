"""A sweep's Tune state is restored only if a sweep wrote it: signed when written, checked before
``Tuner.restore`` unpickles any of it.

Ray Tune unpickles what it finds in the experiment folder on a restore: ``tuner.pkl``, the
newest ``experiment_state-*.json`` (cloudpickled trials), the search algorithm's state
(``search_gen_state-*.json``, ``basic-variant-state-*.json``, ``searcher-state-*.pkl``), the
callbacks' state (``callback-states-*.pkl``) and, for an errored trial, ``<trial>/error.pkl``.
Whoever can write the storage (a folder, an S3 prefix) would get code run by the next
``--resume``. So:

- Signing. ``MANIFEST`` holds the SHA-256 of every such file, under an HMAC-SHA256 with a key
  only sweeps know (``state_key``). ``sign_new_sweep`` writes it once ``tune.Tuner`` has written
  ``tuner.pkl``; ``StateSigner``, a Tune callback, rewrites it in every experiment snapshot.
  Tune writes a snapshot into a local staging folder and then uploads that whole folder in the
  background (``TuneController.save_to_dir`` then ``syncer.sync_up``): the signer writes the
  manifest into the staging folder while the snapshot is written (Tune asks callbacks for their
  state after the trial and searcher files, before the upload starts), so it travels in the same
  upload as the files it signs, and a driver killed at any moment leaves a matching pair. The
  two newest digests of each file are kept, for an upload cut half-way.
- The callbacks' file is written after the callbacks were asked for their state, so it is
  checked by content: it must unpickle with no class or function at all (plain data), and every
  callback state in it must be sealed (``seal``, as ``RungKeeper`` does with the scheduler's).
- ``verify_sweep_state`` checks all of it in storage and raises ``UntrustedStateError``, naming
  the file, before anything is unpickled; a refusal writes nothing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import io
import json
import logging
import os
import pickle  # nosec B403
import posixpath
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

from app.config import ConfigError
from app.errors import UntrustedStateError

logger = logging.getLogger(__name__)

KEY_ENV = "RAYVISION_TUNE_STATE_KEY"
MIN_KEY_CHARS = 32
MANIFEST = "rayvision-state.sig.json"
CALLBACK_STATES = "callback-states-*.pkl"
ERROR_PICKLE = "error.pkl"
MAC_FIELD = "rayvision_mac"
KEEP = 2  # digests kept per file: the snapshot being uploaded and the one before it
_FORMAT = 1
_KEY_HINT = f"tampered with, or signed with another key: a sweep resumes with the {KEY_ENV} it had"


def key_file() -> Path:
    return Path.home() / ".cache" / "rayvision" / "tune-state.key"


def state_key(env: Mapping[str, str] = os.environ) -> bytes:
    """The signing key: ``RAYVISION_TUNE_STATE_KEY`` (a cluster's Secret), else a key file made
    on first use (mode 0600) for this user's local sweeps."""
    given = env.get(KEY_ENV)
    if given is not None:
        if len(given.strip()) < MIN_KEY_CHARS:
            raise ConfigError(f"{KEY_ENV} must hold at least {MIN_KEY_CHARS} characters")
        return given.strip().encode()
    path = key_file()
    if not path.exists():
        _create_key_file(path)
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} (the Tune state key) is open to other users: chmod 600 it")
    key = path.read_text().strip()
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"{path} holds no usable key: delete it, a new one is made on next use")
    return key.encode()


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    try:
        os.link(draft, path)  # never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        draft.unlink()


# ---------------------------------------------------------------------------------------------
# What is signed


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_state_file(name: str) -> bool:
    """A file of the experiment folder (``<trial>/error.pkl`` for a trial's) that Tune may
    unpickle on a restore. Tune finds its files by name patterns that start with a fixed word,
    so a hidden file (its own half-written temporaries) is never one of them."""
    parts = name.split("/")
    if len(parts) == 2:
        return parts[1] == ERROR_PICKLE and not parts[0].startswith(".")
    return (
        len(parts) == 1
        and not name.startswith(".")
        and name != MANIFEST
        and name.endswith((".json", ".pkl"))
    )


def _manifest_mac(key: bytes, files: Mapping[str, list[str]]) -> str:
    body = json.dumps({"format": _FORMAT, "files": files}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, b"rayvision-tune-state\0" + body.encode(), hashlib.sha256).hexdigest()


def manifest_bytes(files: Mapping[str, list[str]], key: bytes) -> bytes:
    signed = {"format": _FORMAT, "files": dict(files), "mac": _manifest_mac(key, files)}
    return json.dumps(signed, sort_keys=True, indent=1).encode()


def signed_files(raw: bytes, key: bytes) -> dict[str, list[str]]:
    """The digests a manifest holds, once its MAC is checked (``UntrustedStateError`` if not)."""
    try:
        manifest = json.loads(raw)
        files, mac = manifest["files"], manifest["mac"]
        valid = (
            manifest["format"] == _FORMAT
            and isinstance(mac, str)
            and isinstance(files, dict)
            and all(
                isinstance(d, list) and all(isinstance(x, str) for x in d) for d in files.values()
            )
        )
    except (ValueError, TypeError, KeyError):
        valid = False
    if not valid or not hmac.compare_digest(mac, _manifest_mac(key, files)):
        raise UntrustedStateError(f"{MANIFEST} does not verify ({_KEY_HINT})")
    return {str(name): list(digests) for name, digests in files.items()}


def seal(state: Mapping[str, bytes]) -> dict[str, Any]:
    """A callback's state (names to bytes, e.g. a pickled scheduler) with its MAC, which the
    callbacks' file is checked by before Tune unpickles it (and ``unseal`` before its bytes)."""
    return {**state, MAC_FIELD: _seal_mac(state_key(), state)}


def unseal(state: Any, key: bytes | None = None) -> dict[str, bytes]:
    if not isinstance(state, dict) or not isinstance(state.get(MAC_FIELD), str):
        raise UntrustedStateError(f"a callback state is not sealed ({_KEY_HINT})")
    values = {name: value for name, value in state.items() if name != MAC_FIELD}
    if not all(isinstance(n, str) and isinstance(v, bytes) for n, v in values.items()):
        raise UntrustedStateError("a callback state holds more than named bytes")
    if not hmac.compare_digest(state[MAC_FIELD], _seal_mac(key or state_key(), values)):
        raise UntrustedStateError(f"a callback state does not verify ({_KEY_HINT})")
    return values


def _seal_mac(key: bytes, state: Mapping[str, bytes]) -> str:
    mac = hmac.new(key, b"rayvision-callback-state\0", hashlib.sha256)
    for name in sorted(state):
        for part in (name.encode(), state[name]):
            mac.update(len(part).to_bytes(8, "big") + part)
    return mac.hexdigest()


class _PlainData(pickle.Unpickler):
    """Loads only plain data (dicts, lists, strings, bytes, numbers, None): a pickle that names
    any class or function, the only way one runs code, is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")


def check_callback_states(name: str, data: bytes, key: bytes) -> None:
    try:
        # The unpickler that loads no class or function (no code): nothing else unpickles here.
        states = _PlainData(io.BytesIO(data)).load()  # nosec B301
    except Exception as exc:  # any malformed pickle is a refusal, whatever it raised
        raise UntrustedStateError(f"refusing {name}: {exc}") from None
    if not isinstance(states, dict):
        raise UntrustedStateError(f"refusing {name}: not a table of callback states")
    for state in states.values():
        if state is not None:
            try:
                unseal(state, key)
            except UntrustedStateError as exc:
                raise UntrustedStateError(f"refusing {name}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Storage (the pyarrow filesystem Ray resolves a storage path or URI to)


def _filesystem(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def _read(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return bytes(stream.readall())


def stored_state_files(fs: Any, root: str) -> list[str]:
    """The files under ``root`` (an experiment folder) that Tune may unpickle, relative to it."""
    import pyarrow.fs

    found = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True, recursive=False))
    names = [i.base_name for i in found if i.type == pyarrow.fs.FileType.File]
    folders = [i for i in found if i.type == pyarrow.fs.FileType.Directory]
    errors = fs.get_file_info([f"{i.path}/{ERROR_PICKLE}" for i in folders]) if folders else []
    names += [
        f"{posixpath.basename(posixpath.dirname(i.path))}/{ERROR_PICKLE}"
        for i in errors
        if i.type == pyarrow.fs.FileType.File
    ]
    return sorted(name for name in names if is_state_file(name))


def verify_sweep_state(path: str, key: bytes | None = None) -> None:
    """Raise ``UntrustedStateError`` unless every file at ``path`` (a sweep's experiment folder,
    local or remote) that Tune would unpickle is one a sweep signed. Reads only."""
    key = key or state_key()
    import pyarrow.fs

    fs, root = _filesystem(path)
    if fs.get_file_info(f"{root}/{MANIFEST}").type != pyarrow.fs.FileType.File:
        raise UntrustedStateError(
            f"refusing to restore the sweep at {path}: its Tune state is unsigned (no {MANIFEST})"
        )
    try:
        signed = signed_files(_read(fs, f"{root}/{MANIFEST}"), key)
    except UntrustedStateError as exc:
        raise UntrustedStateError(f"refusing to restore the sweep at {path}: {exc}") from None
    for name in stored_state_files(fs, root):
        data = _read(fs, f"{root}/{name}")
        if fnmatch.fnmatchcase(name, CALLBACK_STATES):
            check_callback_states(name, data, key)
        elif name not in signed:
            raise UntrustedStateError(
                f"refusing to restore the sweep at {path}: {name} is unsigned (no sweep wrote it)"
            )
        elif not any(hmac.compare_digest(_digest(data), d) for d in signed[name]):
            raise UntrustedStateError(
                f"refusing to restore the sweep at {path}: {name} does not match its "
                f"signature ({_KEY_HINT})"
            )


def sign_new_sweep(path: str) -> None:
    """Sign ``tuner.pkl``, which ``tune.Tuner`` writes straight to storage when it is made (the
    snapshots that follow carry its digest on)."""
    key = state_key()
    fs, root = _filesystem(path)
    files = {"tuner.pkl": [_digest(_read(fs, f"{root}/tuner.pkl"))]}
    with fs.open_output_stream(f"{root}/{MANIFEST}") as out:
        out.write(manifest_bytes(files, key))


def local_digests(folder: Path) -> dict[str, str]:
    """Digests of the state files in a local experiment folder (Tune's staging folder), the
    callbacks' file aside (checked by content)."""
    names = [p.name for p in folder.iterdir() if p.is_file()]
    names += [f"{p.name}/{ERROR_PICKLE}" for p in folder.iterdir() if (p / ERROR_PICKLE).is_file()]
    return {
        name: _digest((folder / name).read_bytes())
        for name in names
        if is_state_file(name) and not fnmatch.fnmatchcase(name, CALLBACK_STATES)
    }


def write_local_manifest(folder: Path, files: Mapping[str, list[str]], key: bytes) -> None:
    draft = folder / f".{MANIFEST}.{secrets.token_hex(4)}"  # hidden: Tune loads no such name
    draft.write_bytes(manifest_bytes(files, key))
    draft.replace(folder / MANIFEST)


class StateSigner(Callback):
    """Signs every experiment snapshot of the sweep it runs in (see the module's docstring).
    Tune asks callbacks for their state while it writes a snapshot into its staging folder,
    after the trials' and the searcher's files: that is when this one signs them, so that the
    manifest is uploaded with them. Nothing of a running sweep is pickled with it."""

    def __init__(self) -> None:
        self._trials: list[Any] = []
        self._signed: dict[str, list[str]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._trials, self._signed = [], None

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._trials = trials  # Tune's own list: trials added later are in it

    def get_state(self) -> None:
        if self._trials:  # a snapshot without a trial cannot be restored: nothing to sign
            self.sign(self._trials[0].storage)

    def sign(self, storage: Any) -> None:
        """Sign the snapshot in ``storage``'s (a Ray StorageContext's) staging folder."""
        key = state_key()
        if self._signed is None:  # what this sweep signed before: tuner.pkl, earlier sessions
            self._signed = self._carried(storage, key)
        staging = Path(storage.experiment_driver_staging_path)
        for name, digest in local_digests(staging).items():
            earlier = [d for d in self._signed.get(name, []) if d != digest]
            self._signed[name] = [digest, *earlier][:KEEP]
        write_local_manifest(staging, self._signed, key)

    @staticmethod
    def _carried(storage: Any, key: bytes) -> dict[str, list[str]]:
        """The signed digests in storage (written by ``sign_new_sweep`` or checked by the
        restore). A failure to read them leaves them out: the state is then refused on a
        resume, never trusted unchecked."""
        manifest = f"{storage.experiment_fs_path}/{MANIFEST}"
        try:
            return signed_files(_read(storage.storage_filesystem, manifest), key)
        except (OSError, UntrustedStateError) as exc:
            logger.warning("Tune state signatures in storage not carried on: %s", exc)
            return {}

"""What a record needs to be re-run: the commit, the uncommitted change to the code (saved beside result.json as
`source.diff`), and whether the installed packages are the ones `requirements.lock` pins.

"The code" is what decides what a run does: the paths in CODE_PATHS. A change elsewhere (README, results/, an
analysis script) does not make a run dirty, so copying a study's records into results/ while it runs does not
stamp its later runs `-dirty`. Untracked files under CODE_PATHS (a new method module, a new sweep file) count:
they are in the diff as new files, so `git apply source.diff` on a checkout of the commit rebuilds the tree.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.assets import REPO_ROOT

log = logging.getLogger(__name__)
CODE_PATHS = ("harness", "conf", "hydra_plugins", "sweeps", "pyproject.toml")
DIFF_FILE = "source.diff"
LOCK_FILE = REPO_ROOT / "requirements.lock"
# torch keeps the Makefile's TORCH_VERSION pin (a CPU build here, a CUDA build on a GPU box), so it is not locked
UNLOCKED = ("torch",)


@dataclass(frozen=True)
class SourceState:
    """The checkout a run came from: HEAD's commit and the diff of CODE_PATHS against it ('' when clean)."""

    commit: str
    diff: str

    @property
    def dirty(self) -> bool:
        return bool(self.diff)

    @property
    def stamp(self) -> str:
        """The `git_commit` value: the commit, with `-dirty` when the code differs from it."""
        return self.commit + ("-dirty" if self.dirty else "")


def _git(root: Path, *args: str, ok_codes: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode not in ok_codes:
        raise subprocess.CalledProcessError(done.returncode, ["git", *args], done.stdout, done.stderr)
    return done.stdout


def source_state(root: Path = REPO_ROOT, paths: tuple[str, ...] = CODE_PATHS) -> SourceState | None:
    """HEAD and the change of `paths` against it: tracked edits (staged or not) and untracked, not ignored files
    as new-file patches. None outside a git checkout (an installed package)."""
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        diff = _git(root, "diff", "--binary", "HEAD", "--", *paths)
        untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", *paths).split("\0")
        for name in filter(None, untracked):  # `git diff --no-index` exits 1 when the files differ, as they do
            diff += _git(root, "diff", "--binary", "--no-index", "--", os.devnull, name, ok_codes=(0, 1))
    except (OSError, subprocess.CalledProcessError):
        return None
    return SourceState(commit, diff)


@functools.lru_cache(maxsize=1)
def process_source_state() -> SourceState | None:
    """The checkout as this process first saw it: the code a sweep's later runs execute was imported then."""
    return source_state()


def save_diff(run_dir: Path, state: SourceState | None) -> str | None:
    """Write `source.diff` beside result.json when the code is dirty (atomically); remove a stale one when it is
    clean. Returns the file's name, or None when there is none."""
    path = Path(run_dir) / DIFF_FILE
    if state is None or not state.dirty:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{DIFF_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(state.diff)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return DIFF_FILE


def canonical(name: str) -> str:
    """PEP 503's normal form of a distribution name (`Jinja2`, `jinja2` and `huggingface_hub` compare as pip does)."""
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def parse_lock(text: str) -> dict[str, str]:
    """{canonical name: version} of a pip-compile / `uv pip compile` lock: one `name==version` per requirement
    line; comments, `# via` lines, options and hashes are skipped. A line pinning anything but `==` is an error."""
    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip().rstrip("\\").strip()
        if not line or line.startswith(("#", "-", "--")):
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise ValueError(f"lock line {raw.strip()!r} does not pin one version with ==")
        pins[canonical(req.name)] = specs[0].version
    return pins


def read_lock(path: Path = LOCK_FILE) -> dict[str, str] | None:
    try:
        return parse_lock(Path(path).read_text())
    except OSError:
        return None


def installed_versions(names: list[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def lock_mismatches(lock: dict[str, str], installed: dict[str, str | None]) -> dict[str, dict[str, str | None]]:
    """{name: {locked, installed}} for every locked package installed at another version (or not at all).
    Versions compare as versions (`1.0` == `1.0.0`); a local label (`+cpu`) is ignored; UNLOCKED is skipped."""
    from packaging.version import InvalidVersion, Version

    def same(a: str | None, b: str) -> bool:
        if a is None:
            return False
        try:
            return Version(Version(a).public) == Version(Version(b).public)
        except InvalidVersion:
            return a == b

    out = {}
    for name, locked in sorted(lock.items()):
        have = installed.get(name)
        if name not in UNLOCKED and not same(have, locked):
            out[name] = {"locked": locked, "installed": have}
    return out


def environment_record(lock_path: Path = LOCK_FILE) -> dict[str, Any]:
    """`versions_match_lock` (None without a lock file) and `lock_mismatches` for this process's packages."""
    lock = read_lock(lock_path)
    if lock is None:
        return {"versions_match_lock": None, "lock_mismatches": None}
    mismatches = lock_mismatches(lock, installed_versions(list(lock)))
    return {"versions_match_lock": not mismatches, "lock_mismatches": mismatches}


def provenance_record(run_dir: Path) -> dict[str, Any]:
    """The record's provenance keys; writes (or clears) `source.diff` in `run_dir`."""
    state = process_source_state()
    return {"git_commit": state.stamp if state else None, "git_dirty": state.dirty if state else None,
            "diff_file": save_diff(run_dir, state)} | environment_record()


def warn_if_dirty(what: str) -> SourceState | None:
    """A loud warning (not an error) when a sweep starts from code that differs from its commit."""
    state = source_state()
    if state is not None and state.dirty:
        files = sorted({line.split(" b/", 1)[-1] for line in state.diff.splitlines() if line.startswith("diff --git")})
        log.warning("WARNING: %s starts from a dirty tree (%d changed file(s) under %s: %s); every record will carry "
                    "its source.diff, but commit first so the study comes from one commit", what, len(files),
                    ", ".join(CODE_PATHS), ", ".join(files[:5]) + (" ..." if len(files) > 5 else ""))
    return state

"""The kernel alert's commits, as they are: refs resolved in the repository this mfbench was loaded from,
a dirty working tree measured as a temporary commit on top of HEAD (and said so), the files that differ
between the two trees whichever commit is older, and the checkouts the probes run in."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: mfbench/shells/ is two levels down
WORKING_TREE = "the working tree"  # how the report names a head measured with its uncommitted changes


class AlertError(Exception):
    """A problem with what was asked (bad ref, no git, a bad option); reported in one line, exit 2."""


def git(*args: str, cwd: Path | None = None, env: dict | None = None) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=cwd or ROOT, capture_output=True, text=True, env=env)
    except OSError as exc:
        raise AlertError(f"git could not run: {exc}") from None
    if out.returncode != 0:
        said = (out.stderr.strip() or out.stdout.strip()).splitlines()
        raise AlertError(f"git {' '.join(args)}: {said[-1] if said else f'exit {out.returncode}'}")
    return out.stdout.strip()


def check_repository() -> None:
    """Raise where the code the alert compares is not in a git checkout (an installed package, an archive)."""
    try:
        git("rev-parse", "--git-dir")
    except AlertError:
        raise AlertError(f"{ROOT} is not inside a git repository: the alert compares commits, so run it from a "
                         "git clone of mfbench") from None


def commit_of(ref: str) -> str:
    """The commit ``ref`` names; a ref that looks like an option never reaches git as one."""
    try:
        return git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    except AlertError:
        raise AlertError(f"{ref!r} names no commit in {ROOT}") from None


def dirty_files() -> list[str]:
    """Tracked files changed and untracked files not ignored, relative to the repository."""
    changed = git("diff", "--name-only", "--no-renames", "HEAD", "--").splitlines()
    return sorted({*changed, *git("ls-files", "--others", "--exclude-standard").splitlines()})


def working_tree_commit() -> str:
    """A commit of the working tree as it is (ignored files left out) on top of HEAD, written through a
    temporary index: the branch, the index and the files are left as they were."""
    fd, index = tempfile.mkstemp(prefix="mfbench-alert-index-")
    os.close(fd)
    try:
        env = {**os.environ, "GIT_INDEX_FILE": index}
        git("read-tree", "HEAD", env=env)
        git("add", "-A", "--", ".", env=env)
        tree = git("write-tree", env=env)
        ident = {**env, "GIT_AUTHOR_NAME": "mfbench alert", "GIT_AUTHOR_EMAIL": "alert@mfbench",
                 "GIT_COMMITTER_NAME": "mfbench alert", "GIT_COMMITTER_EMAIL": "alert@mfbench"}
        return git("commit-tree", tree, "-p", "HEAD", "-m", "mfbench alert: the working tree", env=ident)
    finally:
        os.unlink(index)


def resolve_head(ref: str) -> tuple[str, list[str]]:
    """(the head commit, the uncommitted files it includes). ``HEAD`` with uncommitted changes is the
    working tree as it is, so what is measured is what the user has."""
    head = commit_of(ref)
    if ref != "HEAD":
        return head, []
    files = dirty_files()
    return (working_tree_commit(), files) if files else (head, [])


def changed_files(base: str, head: str, globs: tuple[str, ...]) -> list[str]:
    """Files matching ``globs`` that differ between the two trees, whichever commit is older."""
    files = git("diff", "--name-only", "--no-renames", base, head, "--").splitlines()
    return [f for f in files if any(fnmatch.fnmatch(f, g) for g in globs)]


def add_worktree(path: Path, sha: str) -> None:
    git("worktree", "add", "--detach", str(path), sha)


def remove_worktrees(paths: list[Path]) -> None:
    """Best effort, on every path out of the alert: a left worktree would hold its commit's files."""
    for path in paths:
        if path.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)

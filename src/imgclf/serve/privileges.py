"""Serving without root: read what needs root, then become an unprivileged user for good.

The image runs as root because SageMaker local mode mounts root-owned 0700 folders at /opt/ml.
`imgclf-serve` started as root copies the model artifact into a folder of its own (extracting a
model.tar.gz safely when that is what it finds), hands that folder to the serving user
(`IMGCLF_SERVE_USER`, default `imgclf`, created in the image), and drops to that user: groups,
group and user ids, irreversibly, before the HTTP port opens. The model server, started earlier
(its JVM is slow to start), is started as that user, so it and its workers never hold root.
Started as any other user it changes nothing.
"""
from __future__ import annotations

import logging
import os
import pwd
import shutil
from pathlib import Path

from ..artifact.archive import packed_model, safe_extract

log = logging.getLogger(__name__)

SERVE_USER_ENV = "IMGCLF_SERVE_USER"
DEFAULT_USER = "imgclf"


def serving_user(name: str | None) -> pwd.struct_passwd | None:
    """The user to drop to, or None when we are not root or root is asked for. A user asked for
    by name must exist; the default one (the image's) may be missing outside the image."""
    if os.geteuid() != 0 or name == "root":
        return None
    try:
        return pwd.getpwnam(name or DEFAULT_USER)
    except KeyError:
        if name:
            raise RuntimeError(f"serving user {name!r} does not exist (set {SERVE_USER_ENV} to an existing user, "
                               "or to root to serve as root)") from None
    log.warning("serving as root: there is no user %r to drop to (set %s)", DEFAULT_USER, SERVE_USER_ENV)
    return None


def stage_model(model_dir: Path, dest: Path) -> Path:
    """A copy of the artifact in `dest`: its plain files (links and special files are left out),
    or the contents of its model.tar.gz when it holds only that."""
    archive = packed_model(model_dir)
    if archive is not None:
        log.info("extracting %s", archive)
        return safe_extract(archive, dest)
    for path in sorted(model_dir.rglob("*")):
        target = dest / path.relative_to(model_dir)
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            log.warning("not copying %s: only plain files and folders are served", path)
        elif path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def give(path: Path, user: pwd.struct_passwd) -> None:
    """`path` and everything under it to `user`."""
    for p in [path, *path.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid, follow_symlinks=False)


def user_environment(user: pwd.struct_passwd, home: Path) -> dict[str, str]:
    """The variables that name `user`, with `home` as HOME (the JVM writes its preferences there)."""
    return {"HOME": str(home), "USER": user.pw_name, "LOGNAME": user.pw_name}


def drop_to(user: pwd.struct_passwd, home: Path) -> None:
    """Become `user` for the rest of the process (and every process it starts), with `home` as HOME."""
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    if os.getuid() == 0 or os.geteuid() == 0:  # setuid must not be reversible
        raise RuntimeError("could not drop root privileges")
    os.environ.update(user_environment(user, home))
    log.info("serving as %s (uid %d, gid %d)", user.pw_name, user.pw_uid, user.pw_gid)

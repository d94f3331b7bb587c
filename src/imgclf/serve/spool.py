"""Large request bodies pass from the front to the model worker as files, not through the model
server.

multi-model-server's frontend (Java) aggregates a whole request body on its heap before handing it
to a worker, so a 1 GB async payload would sit in the front, in the JVM and in the worker at once,
and the JVM heap would have to be sized for the largest payload. Instead the front streams a body
over `environment.IN_MEMORY_BYTES` into a file in the spool folder, as it arrives, and sends the
model server an empty body with the file's name in `SPOOLED_BODY`; the worker reads the file
(`read_body`) and the front deletes it once the answer is back. The header is the front's own: one
that a client sends is dropped before forwarding, and the worker reads only plain files directly
inside the spool folder.
"""
from __future__ import annotations

import os
import re
import uuid
from http import HTTPStatus
from pathlib import Path

from .errors import ServeError

SPOOLED_BODY = "X-Imgclf-Spooled-Body"
SPOOL_DIR_ENV = "IMGCLF_SPOOL_DIR"  # set by the server for its model workers
FILE_NAME = re.compile(r"body-[0-9a-f]{32}")

class SpoolError(ServeError):
    status = HTTPStatus.INTERNAL_SERVER_ERROR

class Spooled:
    """A request body in a file of the spool folder; `head`: its first bytes (to sniff its type)."""

    def __init__(self, path: Path, head: bytes, file):
        self.path, self.head, self.file = path, head, file

    @classmethod
    def start(cls, spool_dir: Path, chunks: list[bytes]) -> Spooled:
        spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = spool_dir / f"body-{uuid.uuid4().hex}"
        file = open(path, "wb")  # noqa: SIM115 (closed by Front.read_body)
        file.writelines(chunks)
        return cls(path, b"".join(chunks)[:64], file)

def read_body(name: str, environ=os.environ) -> bytes:
    """The body the front spooled as `name` (the header's value), read in the worker."""
    spool_dir = environ.get(SPOOL_DIR_ENV)
    if not spool_dir or not FILE_NAME.fullmatch(name):
        raise SpoolError(f"no spooled body {name!r}")
    path = Path(spool_dir) / name
    try:
        return path.read_bytes()
    except OSError as e:
        raise SpoolError(f"spooled body {name} unreadable: {e.strerror}") from None

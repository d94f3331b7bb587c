"""What a request body is when its Content-Type does not say: the content type its first bytes
show. Apart from decoder.py so that the front can use it without loading torch."""
from __future__ import annotations

UNTYPED = ("", "application/octet-stream", "application/x-www-form-urlencoded")
MAGIC = (  # leading bytes -> the content type whose decoder reads them
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "application/x-image"),
    (b"GIF89a", "application/x-image"),
    (b"BM", "application/x-image"),
    (b"II*\x00", "application/x-image"),
    (b"MM\x00*", "application/x-image"),
    (b"\x93NUMPY", "application/x-npy"),
)


def sniff(body: bytes) -> str | None:
    """The content type that the body's first bytes show, or None."""
    head = bytes(body[:16])
    for magic, mime in MAGIC:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "application/x-image"
    if head.lstrip()[:1] in (b"{", b"[", b'"'):
        return "application/json"
    return None

"""The entry point that multi-model-server's Python worker calls (`imgclf.serve.mms_entry:handle`):
`HandlerService` (handler_service.py), with each answer padded so that MMS's frontend can always
decode the worker's reply.

Why: MMS 1.1.11's frontend decodes the worker's reply (ModelResponseDecoder.java) as it arrives,
and two of its fields throw instead of waiting for more bytes when a read ends inside them: each
request's 4-byte status (`in.readInt()`) and its response-header map (`CodecUtils.readMap`, where
the Content-Type that a handler sets ends up). The frontend then closes the worker's socket,
every request of the batch gets 500 "Worker died." and the worker restarts: batches of answers of
mixed lengths hit it within a few hundred requests. Netty reads into buffers whose sizes are
multiples of 16 bytes, and a reply (a few kB) is on the socket whole before it reads, so the
reads end at multiples of 16. So, per request: no response headers (the front sets the answers'
Content-Type), and spaces after its JSON (the front strips them) so that the next request's
status field starts 1-12 bytes past a multiple of 16. The layout mirrors
mms.protocol.otf_message_handler.create_predict_response.
"""
from __future__ import annotations

from .handler_service import HandlerService

SUCCESS_MESSAGE = "Prediction success"  # what mms.service.Service.predict sends with a full batch
READ_ALIGN = 16  # Netty's receive buffers are multiples of 16 bytes
INT = 4
SAFE_STATUS_OFFSETS = range(1, READ_ALIGN - INT + 1)  # offset mod 16 for which no read ends inside the status

_service: HandlerService | None = None


def handle(data, context):
    """MMS calls this with data None once, when it loads the model, then once per batch."""
    global _service
    if data is None:
        _service = HandlerService()
        _service.initialize(context)
        return None
    answers = _service.handle(data, context)
    for i in range(len(answers)):
        context.get_response_headers(i).clear()  # the Content-Type too: the front sets it
    return pad_answers([a.encode() if isinstance(a, str) else bytes(a) for a in answers], context)


def pad_answers(answers: list[bytes], context) -> list[bytes]:
    """The answers, each followed by 0-15 spaces so that the next request's status field starts at
    a safe offset of the reply."""
    offset = INT + INT + len(SUCCESS_MESSAGE.encode())  # code, message length, message
    padded = []
    for i, body in enumerate(answers):
        offset += INT + len(context.get_request_id(i).encode())
        offset += INT + len((context.get_response_content_type(i) or "").encode())
        # offset is now where request i's status starts; its answer must put request i+1's there too
        phrase = context.get_response_status(i)[1] or ""
        headers = context.get_response_headers(i) or {}
        offset += INT + INT + len(phrase.encode()) + INT + sum(2 * INT + len(k.encode()) + len(v.encode())
                                                              for k, v in headers.items())
        offset += INT + len(body)
        if i + 1 < len(answers):
            following = offset + INT + len(context.get_request_id(i + 1).encode()) + INT + len(
                (context.get_response_content_type(i + 1) or "").encode())
            pad = next(n for n in range(READ_ALIGN) if (following + n) % READ_ALIGN in SAFE_STATUS_OFFSETS)
            body += b" " * pad
            offset += pad
        padded.append(body)
    return padded

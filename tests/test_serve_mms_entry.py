"""The worker's replies, encoded by MMS's own encoder, against a port of MMS 1.1.11's frontend
decoder (ModelResponseDecoder.java): with mms_entry's framing no read that ends at a multiple of
16 bytes makes the decoder throw (which drops the worker); without it, some do."""
import json
import struct
import uuid

import pytest
from mms.context import Context, RequestProcessor
from mms.protocol.otf_message_handler import create_predict_response

from imgclf.serve.mms_entry import SUCCESS_MESSAGE, pad_answers


class Throws(Exception):
    """Where the Java decoder throws (the frontend then closes the worker's socket)."""


class UnderRun(Exception):
    """Where it returns to wait for more bytes (harmless)."""


def decode_java(buf: bytes) -> int:
    """ModelResponseDecoder.decode on the first len(buf) bytes of a reply: the number of
    predictions when complete; raises UnderRun or Throws as the Java code would."""
    pos = 0

    def read_int(guarded: bool) -> int:
        nonlocal pos
        if len(buf) - pos < 4:
            raise UnderRun() if guarded else Throws("readInt")
        pos += 4
        return struct.unpack("!i", buf[pos - 4:pos])[0]

    def read_length() -> int:  # CodecUtils.readLength: -3 (under-run) instead of throwing
        if len(buf) - pos < 4:
            return -3
        n = read_int(True)
        return -3 if n > len(buf) - pos else n

    def read(n: int) -> bytes:  # CodecUtils.read: a negative size throws
        nonlocal pos
        if n < 0:
            raise Throws("Invalid message size")
        pos += n
        return buf[pos - n:pos]

    if len(buf) < 9:
        raise UnderRun()
    read_int(True)
    n = read_length()
    if n == -3:
        raise UnderRun()
    read(n)
    count = 0
    while (n := read_length()) != -1:
        for _ in range(2):  # request id, content type
            if n == -3:
                raise UnderRun()
            read(n)
            n = read_length() if _ == 0 else n
        read_int(False)  # the status: unguarded
        for field in ("phrase", "headers", "body"):
            n = read_length()
            if n == -3:
                raise UnderRun()
            if field == "headers":
                for _ in range(n):  # CodecUtils.readMap: under-runs become read(-3)
                    read(read_length())
                    read(read_length())
            else:
                read(n)
        count += 1
    return count


def context_for(n: int) -> Context:
    ctx = Context("model", "/m", None, 8, None, "1.1.11")
    ctx.request_ids = {i: str(uuid.uuid4()) for i in range(n)}
    ctx.request_processor = [RequestProcessor({}) for _ in range(n)]
    return ctx


def batch(seed: int) -> tuple[Context, list[bytes]]:
    """A batch of answers of mixed lengths, some refused with a phrase, each with the JSON
    Content-Type that the handler sets."""
    import random

    rng = random.Random(seed)
    n = rng.randint(1, 8)
    ctx = context_for(n)
    answers = []
    for i in range(n):
        ctx.set_response_content_type(i, "application/json")
        if rng.random() < 0.3:
            ctx.set_response_status(400, "Bad Request", i)
            answers.append(json.dumps({"error": "Bad Request", "message": "x" * rng.randint(0, 120)}).encode())
        else:
            top = [{"label": "l" * rng.randint(1, 30), "probability": rng.random()} for _ in range(rng.randint(1, 5))]
            answers.append(json.dumps({"predictions": [top]}).encode())
    return ctx, answers


def fatal_reads(reply: bytes) -> list[int]:
    """The read ends (multiples of 16) at which the decoder would throw."""
    fatal = []
    for end in range(16, len(reply), 16):
        try:
            decode_java(reply[:end])
        except Throws:
            fatal.append(end)
        except UnderRun:
            pass
    return fatal


@pytest.mark.parametrize("seed", range(40))
def test_framed_replies_survive_every_16_byte_read(seed):
    ctx, answers = batch(seed)
    for i in range(len(answers)):
        ctx.get_response_headers(i).clear()  # as mms_entry.handle does
    padded = pad_answers(answers, ctx)
    assert [p.rstrip(b" ") for p in padded] == answers and all(json.loads(p) for p in padded)
    reply = bytes(create_predict_response(padded, ctx.request_ids, SUCCESS_MESSAGE, 200, context=ctx))
    assert decode_java(reply) == len(answers)
    assert fatal_reads(reply) == []


def test_unframed_replies_do_break_the_decoder():
    """The same batches as MMS encodes them without the framing: some read ends are fatal."""
    broken = 0
    for seed in range(40):
        ctx, answers = batch(seed)
        reply = bytes(create_predict_response(answers, ctx.request_ids, SUCCESS_MESSAGE, 200, context=ctx))
        broken += bool(fatal_reads(reply))
    assert broken > 10

"""The audit protocol's decoders: any bytes are decoded or refused with
AuditError (never another exception), encodings round-trip, and a trace is
accepted only under the message miner's signature."""
from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, strategies as st

from bws.node.audit import (
    AuditError, AuditServer, decode_messages_answer, decode_signed_trace, decode_trace_roots, encode_signed_trace,
    encode_trace_roots,
)
from bws.node.roles.context import MessageLog
from bws.node.wallet import Account
from bws.spec import containers as C
from bws.spec.hashing import ZERO_HASH
from bws.spec.pouw import compute_message_digest, sign_iteration_message

MINER = Account(bytes([7]) * 32)
OTHER = Account(bytes([9]) * 32)
WORK = C.IterationWork(task_id=bytes(32), iteration=3, miner=MINER.address, state_before_root=ZERO_HASH, batch_index=0,
                       batch_root=ZERO_HASH, batch_proof=[], peer_update_roots=[], update_root=ZERO_HASH,
                       state_after_root=ZERO_HASH, loss=0)
SIGNED = sign_iteration_message(MINER.secret_key, C.IterationMessage(work=WORK, header_commitment=ZERO_HASH))
DIGEST = bytes(compute_message_digest(SIGNED.message))

roots = st.lists(st.tuples(st.text(max_size=20), st.binary(min_size=32, max_size=32)), max_size=12)


@given(roots)
def test_trace_roots_round_trip(value):
    encoded = encode_trace_roots(value)
    assert decode_trace_roots(encoded) == (value, len(encoded))


@given(roots)
def test_signed_trace_is_accepted_only_from_the_miner(value):
    assert decode_signed_trace(encode_signed_trace(DIGEST, value, MINER.sign), SIGNED) == value
    try:
        decode_signed_trace(encode_signed_trace(DIGEST, value, OTHER.sign), SIGNED)
    except AuditError as error:
        assert "not signed" in str(error)
    else:
        raise AssertionError("a trace signed by another key was accepted")


@given(st.binary(max_size=300))
def test_any_trace_bytes_decode_or_are_refused(data):
    try:
        decode_signed_trace(data, SIGNED)
    except AuditError:
        pass


@given(st.binary(max_size=300))
def test_any_message_answer_decodes_or_is_refused(data):
    try:
        messages = decode_messages_answer(b"\x01" + data)
    except AuditError:
        return
    assert all(isinstance(m, C.SignedIterationMessage) for m in messages)


@given(st.binary(max_size=120))
def test_the_server_answers_any_request(data):
    server = AuditServer(SimpleNamespace(account=MINER, messages=MessageLog()))
    answer = server.serve("peer", data)
    assert answer[:1] in (b"\x00", b"\x01")

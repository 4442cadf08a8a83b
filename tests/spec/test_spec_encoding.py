"""Canonical encoding: round trips, exact byte layout, strict decoding."""
import dataclasses

import pytest

from bws.spec import containers as C
from bws.spec.constants import MAX_GROUP_SIZE
from bws.spec.encoding import (
    ByteList, Container, DecodeError, boolean, List, Map, SortedSet, Union, decode, encode, int64, uint8, uint16, uint64,
    uint256,
)
from bws.spec.presets import DEVNET, MAINNET
from bws.spec.types import Address, Bytes32, Root


def test_integers_are_fixed_width_little_endian():
    assert encode(1, uint16) == b"\x01\x00"
    assert encode(2**64 - 1, uint64) == b"\xff" * 8
    assert encode(-2, int64) == (2**64 - 2).to_bytes(8, "little")
    assert decode(b"\x05" + b"\x00" * 31, uint256) == 5


def test_out_of_range_values_cannot_be_built_or_encoded():
    with pytest.raises(ValueError):
        uint8(256)
    with pytest.raises(ValueError):
        encode(-1, uint64)
    with pytest.raises(TypeError):
        uint64(True)
    with pytest.raises(ValueError):
        Address(b"\x00" * 19)


def test_bytelist_and_list_are_length_prefixed():
    assert encode(b"ab", ByteList(4)) == b"\x02\x00\x00\x00ab"
    assert encode([1, 2], List(uint8, 4)) == b"\x02\x00\x00\x00\x01\x02"


@pytest.mark.parametrize("typ,data,problem", [
    (uint64, b"\x00" * 7, "input too short"),
    (uint16, b"\x00" * 3, "trailing bytes"),
    (ByteList(2), b"\x03\x00\x00\x00abc", "exceeds the maximum 2"),
    (ByteList(8), b"\x03\x00\x00\x00ab", "input too short"),
    (List(uint8, 2), b"\x03\x00\x00\x00\x01\x02\x03", "exceeds the maximum 2"),
    (SortedSet(uint8, 4), b"\x02\x00\x00\x00\x02\x01", "strictly increasing"),
    (SortedSet(uint8, 4), b"\x02\x00\x00\x00\x01\x01", "strictly increasing"),
    (Map(uint8, uint8, 4), b"\x02\x00\x00\x00\x02\x00\x01\x00", "map keys must be strictly increasing"),
    (Union(C.Transfer, C.Unstake), b"\x02", "unknown selector 2"),
    (boolean, b"\x02", "a boolean is 0 or 1"),
])
def test_strict_decoding_rejects_non_canonical_bytes(typ, data, problem):
    with pytest.raises(DecodeError, match=problem):
        decode(data, typ)


def test_decode_error_names_the_field():
    config = encode(DEVNET)
    with pytest.raises(DecodeError) as error:
        decode(config[:-3], C.ChainConfig)
    assert error.value.path == "min_transaction_fee"
    signed = C.SignedTransaction(
        transaction=C.Transaction(chain_id=1, sender=Address(), nonce=0, fee=1,
                                  body=C.SubmitTask(task_definition=b"{}", dataset_root=Root(), num_batches=1,
                                                    test_set_hash=Bytes32(), group_size=1, iterations=2,
                                                    evaluation_deadline=9, payment=1)),
        public_key=b"\x02" * 33, signature=b"\x01" * 64)
    data = bytearray(encode(signed))
    selector_offset = 4 + 20 + 8 + 8
    data[selector_offset] = 9
    with pytest.raises(DecodeError, match=r"transaction\.body: unknown selector 9"):
        decode(bytes(data), C.SignedTransaction)


def test_round_trip_of_presets_and_states(chain, started):
    for config in (DEVNET, MAINNET):
        assert decode(encode(config), C.ChainConfig) == config
    state, block = started
    assert decode(encode(state), C.State) == state
    assert decode(encode(block), C.Block) == block
    assert encode(decode(encode(block), C.Block)) == encode(block)


def test_map_encoding_does_not_depend_on_insertion_order():
    typ = Map(uint8, uint8, 8)
    assert encode({1: 5, 2: 6}, typ) == encode({2: 6, 1: 5}, typ)


def test_sorted_set_must_be_built_sorted():
    with pytest.raises(ValueError, match="strictly increasing"):
        C.IterationWork(task_id=Bytes32(), iteration=0, miner=Address(), state_before_root=Root(), batch_index=0,
                        batch_root=Root(), batch_proof=[], peer_update_roots=[Root(b"\x02" * 32), Root(b"\x01" * 32)],
                        update_root=Root(), state_after_root=Root(), loss=0)


def test_containers_check_their_fields_on_construction():
    with pytest.raises(ValueError, match=r"Transfer\.amount"):
        C.Transfer(recipient=Address(), amount=-1)
    with pytest.raises(ValueError, match=r"IterationWork\.peer_update_roots"):
        C.IterationWork(task_id=Bytes32(), iteration=0, miner=Address(), state_before_root=Root(), batch_index=0,
                        batch_root=Root(), batch_proof=[], peer_update_roots=[Root(bytes([i]) * 32)
                                                                               for i in range(MAX_GROUP_SIZE + 1)],
                        update_root=Root(), state_after_root=Root(), loss=0)
    with pytest.raises(TypeError, match=r"EvaluationResult\.models: expected ScoredModel"):
        C.EvaluationResult(task_id=Bytes32(), models=[0])
    with pytest.raises(TypeError, match="not one of"):
        C.Dispute(evidence=C.Transfer(recipient=Address(), amount=1))


def test_decode_rejects_non_bytes():
    with pytest.raises(DecodeError, match="expected bytes"):
        decode("00", C.Account)


def test_frozen_containers_cannot_change():
    account = C.Account(balance=1, nonce=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        account.balance = 2


def test_a_container_class_without_fields_encodes_to_nothing():
    @dataclasses.dataclass(frozen=True)
    class Empty(Container):
        pass
    assert encode(Empty()) == b""
    assert decode(b"", Empty) == Empty()

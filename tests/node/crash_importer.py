"""Child process of test_crash_recovery: imports the blocks of a file into a
store, printing each new head after its commit (= acknowledged), then "done"."""
import sys

from bws.node.store import ChainStore
from bws.node.validation import Chain
from bws.spec import containers as C
from bws.spec.encoding import decode
from tests.node.chain_factory import HASH_ORACLES, ChainFactory, hash_replay


def read_blocks(path: str) -> list[C.Block]:
    raw = open(path, "rb").read()
    blocks, offset = [], 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset:offset + 4], "little")
        blocks.append(decode(raw[offset + 4:offset + 4 + size], C.Block))
        offset += 4 + size
    return blocks


def main(data_dir: str, blocks_file: str, seed: int) -> None:
    factory = ChainFactory(miners=2, seed=seed)
    chain = Chain(ChainStore(data_dir), factory.genesis_state, factory.genesis_block, HASH_ORACLES)
    print("ready", flush=True)
    for block in read_blocks(blocks_file):
        result = chain.import_block(block)
        if result.status in ("connected", "reorg"):
            print("ack", chain.head.hash.hex(), flush=True)
    chain.store.close()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

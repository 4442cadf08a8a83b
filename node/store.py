"""The chain store: one DuckDB file, `chain.duckdb`, in the node's data dir.

Tables (all keys are raw bytes as BLOBs; heights and amounts as integers):

| table | one row per | what for |
| --- | --- | --- |
| `blocks` | main-chain block, or side block admitted (node/validation.py; pruned once deep below the head) | header fields as columns, cumulative work, the block's canonical encoding |
| `main_chain` | height of the main chain | height → block hash |
| `transactions` | transaction in a stored block | by tx id, by sender, by block |
| `state_entries` | entry of a state map (accounts, stakes, tasks, task_schedule) at the head | the head state, key/value = canonical encodings |
| `state_undo` | entry a main-chain block changed | the entry's value before the block (NULL: it did not exist) so a reorg can undo it |
| `state_scalars` | main-chain block | the non-map fields of the state after that block (config, height, target, ...) |
| `iteration_messages` | signed iteration message received | the supervisors' record, by (task, iteration, miner) |
| `audit_index` | main-chain block | which task/iteration/miner/message a block's proof used: what an auditor replays |
| `head` | (one row) | the hash of the main chain's tip |

Every change of the chain is one DuckDB transaction (`BEGIN` … `COMMIT`):
connecting a block, disconnecting one, a whole reorg. DuckDB writes the
transaction to its write-ahead log and syncs it at commit, so a node killed at
any instant reopens at the last committed head with exactly that head's state;
nothing half-applied is ever visible. A block is acknowledged (gossiped on,
reported by the API) only after its commit.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb

from bws.spec import containers as C
from bws.spec.encoding import DecodeError, decode, decode_from, encode, get_fields
from bws.spec.hashing import hash_object

DATABASE_FILE = "chain.duckdb"
SCHEMA_VERSION = 4   # 2: state_scalars holds main-chain blocks only (disconnect_head deletes); 3: one message a block;
                     # 4: the state holds the task schedule (state_entries map task_schedule)

# State fields that are maps live as rows of state_entries; the rest as one
# encoded blob per block in state_scalars.
MAP_FIELDS: dict[str, type] = {name: typ for name, typ in get_fields(C.State) if issubclass(typ, dict)}
SCALAR_FIELDS: list[tuple[str, type]] = [(name, typ) for name, typ in get_fields(C.State) if name not in MAP_FIELDS]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    hash BLOB PRIMARY KEY,
    height UBIGINT NOT NULL,
    parent_hash BLOB NOT NULL,
    cumulative_work BLOB NOT NULL,      -- 32-byte big-endian: compares like the integer
    timestamp UBIGINT NOT NULL,
    miner BLOB NOT NULL,
    target BLOB NOT NULL,
    task_id BLOB NOT NULL,
    iteration UBIGINT NOT NULL,
    state_root BLOB NOT NULL,
    transactions_root BLOB NOT NULL,
    transaction_count UINTEGER NOT NULL,
    encoded BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_by_parent ON blocks (parent_hash);
CREATE INDEX IF NOT EXISTS blocks_by_height ON blocks (height);
CREATE TABLE IF NOT EXISTS main_chain (height UBIGINT PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS transactions (
    block_hash BLOB NOT NULL,
    position UINTEGER NOT NULL,
    tx_id BLOB NOT NULL,
    sender BLOB NOT NULL,
    nonce UBIGINT NOT NULL,
    fee UBIGINT NOT NULL,
    kind VARCHAR NOT NULL,
    encoded BLOB NOT NULL,
    PRIMARY KEY (block_hash, position)
);
CREATE INDEX IF NOT EXISTS transactions_by_sender ON transactions (sender, nonce);
CREATE INDEX IF NOT EXISTS transactions_by_id ON transactions (tx_id);
CREATE TABLE IF NOT EXISTS state_entries (map VARCHAR NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (map, key));
CREATE TABLE IF NOT EXISTS state_undo (
    block_hash BLOB NOT NULL, seq UINTEGER NOT NULL, map VARCHAR NOT NULL, key BLOB NOT NULL, old_value BLOB,
    PRIMARY KEY (block_hash, seq)
);
CREATE TABLE IF NOT EXISTS state_scalars (block_hash BLOB PRIMARY KEY, encoded BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS iteration_messages (
    digest BLOB PRIMARY KEY,
    task_id BLOB NOT NULL,
    iteration UBIGINT NOT NULL,
    miner BLOB NOT NULL,
    encoded BLOB NOT NULL,
    received_at DOUBLE NOT NULL
);
CREATE INDEX IF NOT EXISTS iteration_messages_by_work ON iteration_messages (task_id, iteration, miner);
CREATE TABLE IF NOT EXISTS audit_index (
    block_hash BLOB PRIMARY KEY,
    height UBIGINT NOT NULL,
    task_id BLOB NOT NULL,
    iteration UBIGINT NOT NULL,
    miner BLOB NOT NULL,
    message_digest BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_task ON audit_index (task_id, iteration);
CREATE TABLE IF NOT EXISTS head (id UTINYINT PRIMARY KEY, hash BLOB NOT NULL);
"""


class StoreError(Exception):
    """The store cannot do what was asked (missing block, corrupt row, wrong
    file); the message says what."""


@dataclass(frozen=True)
class BlockRecord:
    hash: bytes
    height: int
    parent_hash: bytes
    cumulative_work: int
    encoded: bytes

    def block(self) -> C.Block:
        return decode(self.encoded, C.Block)


def encode_scalars(state: C.State) -> bytes:
    return b"".join(typ.encode_value(getattr(state, name)) for name, typ in SCALAR_FIELDS)


def decode_scalars(data: bytes) -> dict:
    values, offset = {}, 0
    for name, typ in SCALAR_FIELDS:
        values[name], offset = decode_from(typ, data, offset, name)
    if offset != len(data):
        raise DecodeError("state_scalars", f"{len(data) - offset} trailing bytes")
    return values


def state_changes(before: C.State | None, after: C.State) -> list[tuple[str, bytes, bytes | None, bytes | None]]:
    """(map, key, old value, new value) of every map entry that differs
    between two states (None: absent), keys and values as encodings."""
    changes = []
    for name, typ in MAP_FIELDS.items():
        old_map = getattr(before, name) if before is not None else {}
        new_map = getattr(after, name)
        for key in set(old_map) | set(new_map):
            old, new = old_map.get(key), new_map.get(key)
            # Transitions share the entries they do not replace: identity first, equality only for the rest.
            if old is not new and old != new:
                changes.append((
                    name, typ.KEY.encode_value(key),
                    None if old is None else typ.VALUE.encode_value(old),
                    None if new is None else typ.VALUE.encode_value(new),
                ))
    changes.sort(key=lambda change: (change[0], change[1]))
    return changes


def transaction_id(signed: C.SignedTransaction) -> bytes:
    """A transaction's id: the hash of its signed encoding."""
    return bytes(hash_object(signed))


def _work_bytes(work: int) -> bytes:
    return work.to_bytes(32, "big")


class ChainStore:
    """The DuckDB-backed chain. Thread-safe: one connection behind a lock."""

    def __init__(self, data_dir: Path, read_only: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DATABASE_FILE
        if read_only and not self.path.exists():
            raise StoreError(f"no chain store at {self.path}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._db = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as exc:
            hint = " (is a node already running on this data dir?)" if "lock" in str(exc).lower() else ""
            raise StoreError(f"cannot open {self.path}{hint}: {exc}") from None
        except duckdb.Error as exc:
            raise StoreError(f"{self.path} is not a usable chain store: {exc}") from None
        self._lock = threading.RLock()
        self._in_transaction = False
        if not read_only:
            self._db.execute(SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        version = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if version is None or int(version[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version and version[0]}, this node reads {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions ---------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic change: everything inside commits together or not at all."""
        with self._lock:
            if self._in_transaction:
                yield
                return
            self._db.execute("BEGIN TRANSACTION")
            self._in_transaction = True
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._in_transaction = False

    def _one(self, sql: str, params: list | None = None):
        with self._lock:
            return self._db.execute(sql, params or []).fetchone()

    def _all(self, sql: str, params: list | None = None) -> list:
        with self._lock:
            return self._db.execute(sql, params or []).fetchall()

    # -- reads ----------------------------------------------------------
    def is_initialized(self) -> bool:
        return self._one("SELECT count(*) FROM head")[0] == 1

    def head_hash(self) -> bytes:
        row = self._one("SELECT hash FROM head WHERE id = 1")
        if row is None:
            raise StoreError("the store has no chain yet (no genesis)")
        return bytes(row[0])

    def genesis_hash(self) -> bytes:
        row = self._one("SELECT hash FROM main_chain WHERE height = 0")
        if row is None:
            raise StoreError("the store has no chain yet (no genesis)")
        return bytes(row[0])

    def has_block(self, block_hash: bytes) -> bool:
        return self._one("SELECT 1 FROM blocks WHERE hash = ?", [block_hash]) is not None

    def get_block_record(self, block_hash: bytes) -> BlockRecord | None:
        row = self._one("SELECT hash, height, parent_hash, cumulative_work, encoded FROM blocks WHERE hash = ?", [block_hash])
        if row is None:
            return None
        return BlockRecord(bytes(row[0]), int(row[1]), bytes(row[2]), int.from_bytes(row[3], "big"), bytes(row[4]))

    def head_record(self) -> BlockRecord:
        record = self.get_block_record(self.head_hash())
        if record is None:
            raise StoreError("head points at a block that is not stored")
        return record

    def main_chain_hash(self, height: int) -> bytes | None:
        row = self._one("SELECT hash FROM main_chain WHERE height = ?", [height])
        return None if row is None else bytes(row[0])

    def main_chain_hashes(self, start: int, count: int) -> list[bytes]:
        rows = self._all("SELECT hash FROM main_chain WHERE height >= ? ORDER BY height LIMIT ?", [start, count])
        return [bytes(row[0]) for row in rows]

    def is_on_main_chain(self, block_hash: bytes) -> bool:
        return self._one(
            "SELECT 1 FROM main_chain m JOIN blocks b ON b.hash = m.hash AND b.height = m.height WHERE m.hash = ?",
            [block_hash],
        ) is not None

    def fork_height(self, block_hash: bytes) -> int:
        """The height of the newest main-chain ancestor of a stored block (its own if it is on the main chain).
        Reads heights and parents only, never a block's encoding."""
        while True:
            row = self._one("SELECT b.parent_hash, b.height, m.hash IS NOT NULL FROM blocks b "
                            "LEFT JOIN main_chain m ON m.height = b.height AND m.hash = b.hash WHERE b.hash = ?",
                            [block_hash])
            if row is None:
                raise StoreError(f"side branch is missing block {block_hash.hex()}")
            if row[2]:
                return int(row[1])
            block_hash = bytes(row[0])

    def block_count(self) -> int:
        return self._one("SELECT count(*) FROM blocks")[0]

    def state_entry(self, map_name: str, key: bytes) -> bytes | None:
        row = self._one("SELECT value FROM state_entries WHERE map = ? AND key = ?", [map_name, key])
        return None if row is None else bytes(row[0])

    def get_account(self, address: bytes) -> C.Account | None:
        value = self.state_entry("accounts", address)
        return None if value is None else decode(value, C.Account)

    def get_task(self, task_id: bytes) -> C.Task | None:
        value = self.state_entry("tasks", task_id)
        return None if value is None else decode(value, C.Task)

    def removed_task(self, task_id: bytes) -> C.Task | None:
        """A task the chain removed once its evidence expired (spec:
        `is_evidence_expired`), as it last was: the old value of its latest
        main-chain change, which was its removal. None if the head holds it,
        or it never existed."""
        if self.state_entry("tasks", task_id) is not None:
            return None
        row = self._one("SELECT u.old_value FROM state_undo u JOIN main_chain m ON m.hash = u.block_hash "
                        "WHERE u.map = 'tasks' AND u.key = ? ORDER BY m.height DESC LIMIT 1", [task_id])
        return None if row is None or row[0] is None else decode(bytes(row[0]), C.Task)

    def transactions_of(self, sender: bytes, limit: int = 100) -> list[tuple[bytes, int, bytes]]:
        """(block hash, nonce, tx id) of `sender`'s main-chain transactions, newest first."""
        rows = self._all(
            "SELECT t.block_hash, t.nonce, t.tx_id FROM transactions t JOIN main_chain m ON m.hash = t.block_hash "
            "WHERE t.sender = ? ORDER BY t.nonce DESC LIMIT ?", [sender, limit])
        return [(bytes(a), int(b), bytes(c)) for a, b, c in rows]

    def load_head_state(self) -> C.State:
        """The full state after the head block, rebuilt from the tables."""
        with self._lock:
            head = self.head_hash()
            scalars = self._one("SELECT encoded FROM state_scalars WHERE block_hash = ?", [head])
            if scalars is None:
                raise StoreError("no state stored for the head block")
            values = decode_scalars(bytes(scalars[0]))
            for name, typ in MAP_FIELDS.items():
                rows = self._all("SELECT key, value FROM state_entries WHERE map = ?", [name])
                values[name] = typ({
                    decode(bytes(key), typ.KEY): decode(bytes(value), typ.VALUE) for key, value in rows
                })
            return C.State(**values)

    def main_chain_state(self, block_hash: bytes, head_state: C.State) -> C.State:
        """The state after the main-chain block `block_hash`, made from `head_state` (the head's) by undoing in
        memory what the blocks above it changed: a reorg validates its branch on it before the store changes.
        Entries no block above it changed stay shared with `head_state`."""
        with self._lock:
            row = self._one("SELECT m.height, s.encoded FROM main_chain m "
                            "JOIN state_scalars s ON s.block_hash = m.hash WHERE m.hash = ?", [block_hash])
            if row is None:
                raise StoreError(f"main_chain_state: block {block_hash.hex()} is not on the main chain")
            undo = self._all("SELECT u.map, u.key, u.old_value FROM state_undo u "
                             "JOIN main_chain m ON m.hash = u.block_hash WHERE m.height > ? "
                             "ORDER BY m.height DESC, u.seq", [int(row[0])])
        values = decode_scalars(bytes(row[1]))
        maps = {name: dict(getattr(head_state, name)) for name in MAP_FIELDS}
        # Newest block first: a key's last write is the value before the oldest block above that changed it.
        for map_name, key, old in undo:
            typ = MAP_FIELDS[map_name]
            entry_key = decode(bytes(key), typ.KEY)
            if old is None:
                maps[map_name].pop(entry_key, None)
            else:
                maps[map_name][entry_key] = decode(bytes(old), typ.VALUE)
        values.update({name: typ(maps[name]) for name, typ in MAP_FIELDS.items()})
        return C.State(**values)

    # -- writes (each inside one transaction) ---------------------------
    def _insert_rows(self, table: str, width: int, rows: list[list], replace: bool = False) -> None:
        """All rows in one INSERT statement: DuckDB's cost is per statement, not per row."""
        if not rows:
            return
        placeholders = ", ".join(["(" + ", ".join(["?"] * width) + ")"] * len(rows))
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        self._db.execute(f"{verb} INTO {table} VALUES {placeholders}", [value for row in rows for value in row])

    def store_block(self, block: C.Block, block_hash: bytes, cumulative_work: int) -> None:
        """Record a validated block (main chain or not) and its transactions."""
        header = block.header
        with self.transaction():
            if self.has_block(block_hash):
                return
            self._db.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [block_hash, int(header.height), bytes(header.parent_hash), _work_bytes(cumulative_work),
                 int(header.timestamp), bytes(header.miner), int(header.target).to_bytes(32, "big"),
                 bytes(header.task_id), int(header.iteration), bytes(header.state_root),
                 bytes(header.transactions_root), len(block.transactions), encode(block)],
            )
            self._insert_rows("transactions", 8, [
                [block_hash, position, transaction_id(signed), bytes(signed.transaction.sender),
                 int(signed.transaction.nonce), int(signed.transaction.fee), type(signed.transaction.body).__name__,
                 encode(signed)]
                for position, signed in enumerate(block.transactions)])

    def connect_block(self, block: C.Block, block_hash: bytes, cumulative_work: int,
                      before: C.State | None, after: C.State) -> None:
        """Make `block` the new head: its state replaces `before` (the state
        of its parent, the current head; None for genesis) with `after`."""
        with self.transaction():
            if before is not None and bytes(block.header.parent_hash) != self.head_hash():
                raise StoreError("connect_block: the block's parent is not the head")
            self.store_block(block, block_hash, cumulative_work)
            changes = state_changes(before, after)
            self._insert_rows("state_undo", 5, [[block_hash, seq, map_name, key, old]
                                                for seq, (map_name, key, old, _) in enumerate(changes)])
            self._insert_rows("state_entries", 3, [[map_name, key, new] for map_name, key, _, new in changes
                                                   if new is not None], replace=True)
            for map_name, key, _, new in changes:
                if new is None:
                    self._db.execute("DELETE FROM state_entries WHERE map = ? AND key = ?", [map_name, key])
            # Plain INSERT and UPDATE below (DuckDB's INSERT OR REPLACE costs 3-4x): disconnect_head
            # deletes these rows of the block it undoes, so none exists for a block being connected.
            self._db.execute("INSERT INTO state_scalars VALUES (?, ?)", [block_hash, encode_scalars(after)])
            self._db.execute("INSERT INTO main_chain VALUES (?, ?)", [int(block.header.height), block_hash])
            for proof in block.proofs:
                work = proof.message.message.work
                self._db.execute(
                    "INSERT INTO audit_index VALUES (?, ?, ?, ?, ?, ?)",
                    [block_hash, int(block.header.height), bytes(work.task_id), int(work.iteration), bytes(work.miner),
                     bytes(block.header.message_digest)],
                )
            if before is None:
                self._db.execute("INSERT INTO head VALUES (1, ?)", [block_hash])
            else:
                self._db.execute("UPDATE head SET hash = ? WHERE id = 1", [block_hash])

    def disconnect_head(self) -> BlockRecord:
        """Undo the head block's state changes and make its parent the head;
        returns the disconnected block."""
        with self.transaction():
            record = self.head_record()
            if record.height == 0:
                raise StoreError("cannot disconnect the genesis block")
            undo = self._all("SELECT map, key, old_value FROM state_undo WHERE block_hash = ? ORDER BY seq", [record.hash])
            self._insert_rows("state_entries", 3, [[m, k, old] for m, k, old in undo if old is not None], replace=True)
            for map_name, key, old in undo:
                if old is None:
                    self._db.execute("DELETE FROM state_entries WHERE map = ? AND key = ?", [map_name, key])
            self._db.execute("DELETE FROM state_undo WHERE block_hash = ?", [record.hash])
            self._db.execute("DELETE FROM main_chain WHERE height = ?", [record.height])
            self._db.execute("DELETE FROM audit_index WHERE block_hash = ?", [record.hash])
            self._db.execute("DELETE FROM state_scalars WHERE block_hash = ?", [record.hash])
            self._db.execute("UPDATE head SET hash = ? WHERE id = 1", [record.parent_hash])
            return record

    def delete_side_branch(self, block_hash: bytes) -> int:
        """Forget a block that is not on the main chain, and its stored
        descendants (they are found invalid with it); returns how many."""
        with self.transaction():
            if self.is_on_main_chain(block_hash):
                raise StoreError("delete_side_branch: the block is on the main chain")
            doomed, frontier = [], [block_hash]
            while frontier:
                current = frontier.pop()
                if not self.has_block(current):
                    continue
                doomed.append(current)
                frontier.extend(bytes(row[0]) for row in self._all("SELECT hash FROM blocks WHERE parent_hash = ?", [current]))
            for current in doomed:
                self._db.execute("DELETE FROM transactions WHERE block_hash = ?", [current])
                self._db.execute("DELETE FROM blocks WHERE hash = ?", [current])
            return len(doomed)

    def prune_side_blocks(self, low: int, high: int) -> int:
        """Forget the side blocks (off the main chain) at heights in [low, high) and their stored descendants;
        returns how many. One read finds them all (usually none, and then nothing is written)."""
        with self.transaction():
            doomed = [bytes(row[0]) for row in self._all(
                "WITH RECURSIVE doomed(hash) AS ("
                " SELECT b.hash FROM blocks b LEFT JOIN main_chain m ON m.height = b.height AND m.hash = b.hash"
                " WHERE b.height >= ? AND b.height < ? AND m.hash IS NULL"
                " UNION SELECT b.hash FROM blocks b JOIN doomed d ON b.parent_hash = d.hash)"
                " SELECT hash FROM doomed", [low, high])]
            if doomed:
                placeholders = ", ".join(["?"] * len(doomed))
                self._db.execute(f"DELETE FROM transactions WHERE block_hash IN ({placeholders})", doomed)
                self._db.execute(f"DELETE FROM blocks WHERE hash IN ({placeholders})", doomed)
            return len(doomed)

    # -- supervisors' records -------------------------------------------
    def record_iteration_message(self, signed: C.SignedIterationMessage, digest: bytes, received_at: float) -> bool:
        """Keep a signed iteration message; False if it was already kept."""
        work = signed.message.work
        with self.transaction():
            if self._one("SELECT 1 FROM iteration_messages WHERE digest = ?", [digest]) is not None:
                return False
            self._db.execute(
                "INSERT INTO iteration_messages VALUES (?, ?, ?, ?, ?, ?)",
                [digest, bytes(work.task_id), int(work.iteration), bytes(work.miner), encode(signed), received_at],
            )
            return True

    def iteration_messages(self, task_id: bytes, iteration: int | None = None, miner: bytes | None = None) -> list[C.SignedIterationMessage]:
        sql = "SELECT encoded FROM iteration_messages WHERE task_id = ?"
        params: list = [task_id]
        if iteration is not None:
            sql += " AND iteration = ?"
            params.append(iteration)
        if miner is not None:
            sql += " AND miner = ?"
            params.append(miner)
        return [decode(bytes(row[0]), C.SignedIterationMessage) for row in self._all(sql + " ORDER BY iteration, miner, digest", params)]

    def audit_entries(self, task_id: bytes) -> list[dict]:
        rows = self._all(
            "SELECT block_hash, height, iteration, miner, message_digest FROM audit_index WHERE task_id = ? ORDER BY height",
            [task_id])
        return [{"block": bytes(b).hex(), "height": int(h), "iteration": int(i), "miner": bytes(m).hex(),
                 "message_digest": bytes(d).hex()} for b, h, i, m, d in rows]

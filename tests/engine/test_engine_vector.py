"""Iteration vectors: the committed fixtures replay bit for bit with the engine
and the reference; tampering and malformed files are reported, never crash."""
import json
from pathlib import Path

import pytest

from bws.engine.vector import MAGIC, VectorError, make_vector, read_vector
from bws.node.cli import main

VECTORS = Path(__file__).parent / "vectors"
CNN = VECTORS / "cnn-8x8x1-4-8-10-b32.vec"
MLP = VECTORS / "mlp-64-32-10-b64.vec"
# The digests the fixtures were written with: a change of the canonical
# arithmetic shows up here as a failing test, not as a silently rewritten file.
CNN_STATE_ROOT = "e933dd3a9df5c2b1299047805672048edaf387133bed1c60cc7c87669309f1b6"
MLP_STATE_ROOT = "6fcadc575189171054d7383507e469008c577f5ec529f688268f10321115c329"


@pytest.mark.parametrize("impl", ["engine", "reference"])
@pytest.mark.parametrize("path,root", [(CNN, CNN_STATE_ROOT), (MLP, MLP_STATE_ROOT)])
def test_fixture_replays(path, root, impl, capsys):
    assert main(["replay", str(path), "--impl", impl, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["match"] is True and result["got"]["state_root"] == root
    if impl == "engine":
        assert result["ran_on"]["backend"] == "cpu" and result["ran_on"]["pinned_xla_flags"] == [
            "--xla_gpu_enable_triton_gemm=false"]
    else:
        assert set(result["ran_on"]) == {"numpy"}


def test_text_output_names_every_digest(capsys):
    assert main(["replay", str(CNN)]) == 0
    out = capsys.readouterr().out
    assert "state_root" in out and "update_root" in out and "metrics" in out and out.strip().endswith("MATCH")


def test_round_trip_is_byte_identical():
    data = MLP.read_bytes()
    assert read_vector(data).to_bytes() == data


def test_tampered_input_is_a_mismatch(tmp_path, capsys):
    vector = read_vector(CNN.read_bytes())
    vector.batch["x"] = vector.batch["x"].copy()
    vector.batch["x"][0, 0, 0, 0] += 1 << 14  # 0.25: far above the rounding of the int8 slices
    path = tmp_path / "tampered.vec"
    path.write_bytes(vector.to_bytes())
    assert main(["replay", str(path), "--impl", "reference"]) == 1
    assert capsys.readouterr().out.strip().endswith("MISMATCH")


def _corruptions(data: bytes):
    header_len = int.from_bytes(data[8:12], "little")
    yield "truncated", data[:-5]
    yield "bad magic", b"XXXXXXXX" + data[8:]
    yield "trailing", data + b"\0"
    yield "empty", b""
    yield "huge header", data[:8] + (1 << 30).to_bytes(4, "little") + data[12:]
    header = json.loads(data[12:12 + header_len])
    header["model"]["layers"][0]["filters"] = -1
    body = json.dumps(header).encode()
    yield "bad model", data[:8] + len(body).to_bytes(4, "little") + body + data[12 + header_len:]
    count_at = 12 + header_len
    yield "too many tensors", data[:count_at] + (10**6).to_bytes(4, "little") + data[count_at + 4:]
    first = count_at + 4
    name_len = int.from_bytes(data[first:first + 2], "little")
    dtype_at = first + 2 + name_len
    yield "float dtype", data[:dtype_at] + bytes([9]) + data[dtype_at + 1:]
    # tensor data changed without the header's input roots (found by property_tests/test_engine_parsers.py)
    yield "inputs root", data[:1454] + bytes(7) + data[1461:]  # inside batch/x
    original = json.loads(data[12:12 + header_len])
    spaced = json.dumps(original, sort_keys=True).encode()  # valid JSON, not the canonical form
    yield "spaced header", data[:8] + len(spaced).to_bytes(4, "little") + spaced + data[12 + header_len:]


@pytest.mark.parametrize("name,data", list(_corruptions(CNN.read_bytes())))
def test_malformed_file_gives_one_line_error(name, data, tmp_path, capsys):
    with pytest.raises(VectorError):
        read_vector(data)
    path = tmp_path / "bad.vec"
    path.write_bytes(data)
    assert main(["replay", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bws replay: error: vector:") and err.count("\n") == 1


def test_missing_file_and_bad_model_are_errors(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nope.vec")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["engine", "vector", "--model", "mlp:10", "--out", str(tmp_path / "x.vec")]) == 1
    assert "mlp:IN-H1" in capsys.readouterr().err
    assert main(["engine", "vector", "--model", "mlp:10-5", "--batch", "0", "--out", str(tmp_path / "x.vec")]) == 1
    assert "batch" in capsys.readouterr().err


def test_vector_command_writes_a_replayable_file(tmp_path, capsys):
    path = tmp_path / "it.vec"
    assert main(["engine", "vector", "--model", "mlp:12-6-3", "--batch", "16", "--seed", "3",
                 "--slices", "3", "--out", str(path)]) == 0
    vector = read_vector(path.read_bytes())
    assert vector.model["slices"] == 3 and vector.batch["x"].shape == (16, 12)
    assert vector.peer_update_sum["0"]["kernel"].any()  # peers' updates are part of the input
    assert main(["replay", str(path), "--impl", "reference"]) == 0


def test_check_command(capsys):
    assert main(["engine", "check", "--model", "cnn:8x8x1-2-3"]) == 0
    assert "canonical" in capsys.readouterr().out


def test_vector_starts_with_magic():
    assert make_vector({"input_shape": [3], "layers": [{"type": "dense", "units": 2}], "loss": {"type": "mse"},
                        "optimizer": {"type": "sgd"}}, 4, 0).to_bytes().startswith(MAGIC)

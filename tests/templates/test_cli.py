"""bws task new/show and bws train, end to end."""
import json
import os

import pytest

from bws.node.cli import main

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def test_task_new_show_train(tmp_path, data_dir, capsys):
    task_path = str(tmp_path / "task.json")
    assert main(["task", "new", "--template", "dnn", "--dataset", "digits", "--epochs", "2", "--batch-size", "64",
                 "--data-dir", data_dir, "-o", task_path]) == 0
    with open(task_path, "rb") as f:
        assert json.loads(f.read())["template"] == "dnn"
    capsys.readouterr()
    assert main(["task", "show", task_path]) == 0
    shown = capsys.readouterr().out
    assert "dnn" in shown and "Total params" in shown and "46 of 64" in shown

    out = tmp_path / "run"
    assert main(["train", task_path, "--out", str(out), "--data-dir", data_dir, "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.8
    for name in ("loss.png", "model_weights.npz", "model_flax.msgpack", "model_keras.json", "model_keras_weights.npz"):
        assert (out / name).stat().st_size > 0
    with open(out / "loss.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_task_new_writes_canonical_json_to_stdout(data_dir, capsysbinary):
    assert main(["task", "new", "--template", "cnn", "--epochs", "1", "--data-dir", data_dir]) == 0
    data = capsysbinary.readouterr().out
    assert data.endswith(b"\n") and json.loads(data)["template"] == "cnn"


def test_task_new_from_real_keras_json(data_dir, tmp_path):
    assert main(["task", "new", "--template", "cnn", "--epochs", "1", "--data-dir", data_dir,
                 "--model", os.path.join(FIXTURES, "tf_keras2_cnn_sequential.json"), "-o", str(tmp_path / "t.json")]) == 0


def test_gan_writes_a_sample_grid_and_loss_curves(tmp_path, data_dir):
    task_path = str(tmp_path / "gan.json")
    assert main(["task", "new", "--template", "gan", "--epochs", "2", "--data-dir", data_dir, "-o", task_path]) == 0
    out = tmp_path / "gan"
    assert main(["train", task_path, "--out", str(out), "--data-dir", data_dir, "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["final_losses"]) == {"discriminator", "generator"}
    for name in ("samples.png", "loss.png", "generator_flax.msgpack", "discriminator_keras.json"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["task", "new", "--template", "dnn", "--model", os.path.join(FIXTURES, "keras3_unsupported_batchnorm.json")],
     "BatchNormalization"),
    (["task", "new", "--template", "dnn", "--dataset", "mnist"], "tfds build mnist"),
    (["task", "new", "--template", "dnn", "--epochs", "0"], "--epochs must be positive"),
    (["task", "new", "--template", "gan", "--model", "x.json"], "--generator and --discriminator"),
    (["task", "show", "/nonexistent/task.json"], "cannot read task file"),
])
def test_errors_are_one_readable_line(argv, message, data_dir, capsys):
    assert main([*argv, *(["--data-dir", data_dir] if argv[1] == "new" else [])]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_task_file_is_one_readable_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "bws-task/1", "template": "dnn"}')
    assert main(["train", str(bad), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bws train: error:") and "missing" in err and len(err.splitlines()) == 1


def test_a_withheld_test_split_through_the_cli(tmp_path, data_dir, capsys):
    import numpy as np

    from bws.templates import datasets

    test = datasets.load_split("digits", "test", data_dir=data_dir)
    test_file = tmp_path / "mine.npz"
    np.savez(test_file, x=test.inputs[:150], y=test.labels[:150])
    task_path = str(tmp_path / "task.json")
    assert main(["task", "new", "--template", "dnn", "--epochs", "1", "--batch-size", "64", "--data-dir", data_dir,
                 "--test-file", str(test_file), "-o", task_path]) == 0
    capsys.readouterr()
    assert main(["task", "show", task_path]) == 0
    assert "test split withheld (150 examples, the client's, withheld until evaluation)" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["train", task_path, "--out", str(out), "--data-dir", data_dir, "--quiet"]) == 1
    assert "withheld by its client: give the client's --test-file" in capsys.readouterr().err
    assert main(["train", task_path, "--out", str(out), "--data-dir", data_dir, "--quiet",
                 "--test-file", str(test_file)]) == 0
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.5
    # reveal: checked against the task before any node is asked
    assert main(["task", "reveal", task_path, "--test-file", str(FIXTURES), "--data-dir", data_dir,
                 "--api", "http://127.0.0.1:9"]) == 1
    assert "cannot read test file" in capsys.readouterr().err
    public = str(tmp_path / "public.json")
    assert main(["task", "new", "--template", "dnn", "--epochs", "1", "--data-dir", data_dir, "-o", public]) == 0
    assert main(["task", "reveal", public, "--test-file", str(test_file), "--api", "http://127.0.0.1:9"]) == 1
    assert "there is nothing to reveal" in capsys.readouterr().err
    assert main(["task", "reveal", task_path, "--test-file", str(test_file), "--data-dir", data_dir,
                 "--api", "http://127.0.0.1:9"]) == 1
    assert "no node answering at http://127.0.0.1:9" in capsys.readouterr().err

"""`needle train` end to end (tiny budgets), checkpoints, resume, Ctrl-C and the apps/ layout."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import needle as ndl
from needle.apps import cli
from needle.apps.models import MLPResNet
from needle.apps.trainer import Trainer, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
PTB = ndl.data.find_data_dir("ptb", "ptb.valid.txt")  # under $NEEDLE_DATA_DIR, if set


def run(tmp_path, *extra, epochs=2, max_batches=4):
    args = [
        "train",
        "--epochs",
        str(epochs),
        "--max-batches",
        str(max_batches),
        "--out",
        str(tmp_path),
        "--no-progress",
        *extra,
    ]
    return cli.main(args)


def history_without_times(path):
    rows = json.loads((Path(path) / "metrics.json").read_text())
    timed = ("seconds", "data_wait", "data_wait_max", "data_blocked", "data_blocked_max")
    return [{k: v for k, v in row.items() if k not in timed} for row in rows]


def test_default_job_trains_mlp_resnet_on_shipped_mnist(tmp_path, capsys):
    assert cli.main(["train", "--epochs", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "shipped MNIST test split" in out and "validation accuracy" in out
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    # Two epochs on 8,000 images already separate the digits well; chance is 0.1.
    assert rows[-1]["val_accuracy"] > 0.9
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,lr,train_loss,val_loss,train_accuracy,val_accuracy")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_restores_model_and_optimizer(tmp_path):
    assert run(tmp_path) == 0
    model = MLPResNet(784, hidden_dim=256)
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    meta = load_checkpoint(str(tmp_path / "checkpoint.npz"), model, opt)
    assert meta["epoch"] == 2 and meta["config"]["model"] == "mlp-resnet"
    assert opt.state, "Adam moments were not restored"
    # model.safetensors beside it holds the same weights (needle train writes both).
    weights = MLPResNet(784, hidden_dim=256)
    weights.load_weights(str(tmp_path / "model.safetensors"))
    for (name, a), b in zip(model.state_dict().items(), weights.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # Saving what was loaded gives back the same arrays.
    save_checkpoint(str(tmp_path / "again.npz"), model, opt, meta)
    with np.load(tmp_path / "checkpoint.npz") as a, np.load(tmp_path / "again.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_interrupt_leaves_a_checkpoint_and_resume_repeats_the_run(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert run(straight, epochs=3) == 0

    original = Trainer.run_epoch
    calls = {"train": 0}

    def interrupt_in_second_epoch(self, train, *args, **kwargs):
        if train:
            calls["train"] += 1
            if calls["train"] == 2:
                raise KeyboardInterrupt
        return original(self, train, *args, **kwargs)

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(Trainer, "run_epoch", interrupt_in_second_epoch)
    assert run(interrupted, epochs=3) == 130
    monkeypatch.setattr(Trainer, "run_epoch", original)
    with np.load(interrupted / "checkpoint.npz") as saved:
        meta = json.loads(str(saved["meta"]))
    assert meta["epoch"] == 1 and meta["interrupted"]

    assert run(interrupted, "--resume", epochs=3) == 0
    resumed, expected = history_without_times(interrupted), history_without_times(straight)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(resumed, expected):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at"):
        run(tmp_path, "--resume")


@pytest.mark.parametrize("model", ["resnet9", "lstm-lm", "transformer-lm"])
def test_models_needing_downloaded_data_say_so(model, tmp_path):
    with pytest.raises(SystemExit, match="--data-dir"):
        run(tmp_path, "--model", model)
    with pytest.raises(SystemExit, match="is not a directory"):
        run(tmp_path, "--model", model, "--data-dir", str(tmp_path / "missing"))


def test_mnist_data_dir_missing_files_are_named(tmp_path, capsys):
    assert run(tmp_path / "out", "--data-dir", str(tmp_path)) == 1
    assert one_line_error(capsys, r"train-images-idx3-ubyte\.gz")
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz"):
        run(tmp_path / "out", "--data-dir", str(tmp_path), "--debug")


def one_line_error(capsys, pattern):
    """stderr is one line matching `pattern` (a user error's message, no traceback)."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    return True


def write_cifar_batches(folder: Path):
    import pickle

    rng = np.random.default_rng(0)
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
            b"labels": [int(label) for label in rng.integers(0, 10, 8)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_resnet9_trains_on_cifar_format_files(tmp_path):
    write_cifar_batches(tmp_path / "cifar")
    assert (
        run(
            tmp_path / "out",
            "--model",
            "resnet9",
            "--data-dir",
            str(tmp_path / "cifar"),
            "--batch-size",
            "8",
            epochs=1,
            max_batches=2,
        )
        == 0
    )
    assert history_without_times(tmp_path / "out")[0]["epoch"] == 1


def test_resnet9_with_augmentation_and_workers_logs_its_data_wait(tmp_path, capsys):
    write_cifar_batches(tmp_path / "cifar")
    rows = []
    for workers, augment in (("1", ("--augment",)), ("2", ("--augment",)), ("2", ())):
        out = tmp_path / f"{workers}{augment}"
        common = ("--model", "resnet9", "--data-dir", str(tmp_path / "cifar"), *augment)
        assert run(out, *common, "--batch-size", "4", "--workers", workers, max_batches=3) == 0
        rows.append(json.loads((out / "metrics.json").read_text()))
    for row in rows[0]:
        assert 0 <= row["data_blocked"] <= row["data_wait"] <= 1
        assert 0 <= row["data_blocked_max"] <= row["data_wait_max"] <= 1
    timed = ("seconds", "data_wait", "data_wait_max", "data_blocked", "data_blocked_max", "config")
    same = [[{k: v for k, v in r.items() if k not in timed} for r in rows_] for rows_ in rows]
    assert same[0] == same[1]  # the augmentation does not depend on the number of workers
    assert same[1] != same[2]  # (and it changed the images)
    with pytest.raises(SystemExit, match="--augment applies only to --model resnet9"):
        run(tmp_path / "mlp", "--augment")


@pytest.mark.skipif(PTB is None, reason="no PTB text: set NEEDLE_DATA_DIR (a folder with ptb/)")
@pytest.mark.parametrize("model", ["lstm-lm", "transformer-lm"])
def test_language_models_train_on_ptb_text(model, tmp_path):
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    lines = (PTB / "ptb.valid.txt").read_text().splitlines()
    (ptb / "train.txt").write_text("\n".join(lines[:400]) + "\n")
    (ptb / "test.txt").write_text("\n".join(lines[400:500]) + "\n")
    assert (
        run(tmp_path / "out", "--model", model, "--data-dir", str(ptb), epochs=1, max_batches=2)
        == 0
    )
    row = history_without_times(tmp_path / "out")[0]
    assert np.isfinite(row["val_perplexity"]) and row["val_perplexity"] > 1


def test_python_dash_m_needle_runs():
    result = subprocess.run(
        [sys.executable, "-m", "needle", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "--data-dir" in result.stdout


# ---- the course's apps/ layout ------------------------------------------------------------------
@pytest.fixture
def apps(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "apps"))


def test_apps_mlp_resnet_epoch(apps):
    import mlp_resnet

    x = np.random.default_rng(0).random((50, 784)).astype(np.float32)
    y = np.arange(50) % 10
    loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(x, y), batch_size=10)
    model = mlp_resnet.MLPResNet(784, hidden_dim=32)
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    err, loss = mlp_resnet.epoch(loader, model, opt)
    assert 0 <= err <= 1 and np.isfinite(loss)


def test_apps_simple_ml_and_models(apps):
    import models
    import simple_ml

    rng = np.random.default_rng(0)
    X = rng.random((20, 5)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    W1 = ndl.Tensor(rng.standard_normal((5, 8)).astype(np.float32) / 5)
    W2 = ndl.Tensor(rng.standard_normal((8, 3)).astype(np.float32) / 5)
    before = simple_ml.loss_err(ndl.relu(ndl.Tensor(X) @ W1) @ W2, y)[0]
    for _ in range(20):
        W1, W2 = simple_ml.nn_epoch(X, y, W1, W2, lr=0.5, batch=10)
    after = simple_ml.loss_err(ndl.relu(ndl.Tensor(X) @ W1) @ W2, y)[0]
    assert after < before

    ids = rng.integers(0, 30, 200)
    data = ndl.data.batchify(ids, 4)
    model = models.LanguageModel(8, 30, hidden_size=8, num_layers=1, seq_model="lstm")
    acc, loss = simple_ml.train_ptb(model, data, seq_len=5, n_epochs=1, lr=1.0, clip=0.5)
    assert 0 <= acc <= 1 and np.isfinite(loss)
    acc, loss = simple_ml.evaluate_ptb(model, data, seq_len=5)
    assert np.isfinite(loss)


def test_resume_with_more_epochs_continues_the_schedule(tmp_path):
    assert run(tmp_path, epochs=1) == 0
    assert run(tmp_path, "--resume", epochs=3) == 0
    rows = history_without_times(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # Epoch 1 ran a 1-epoch cosine (lr 1e-3); the resumed run follows a 3-epoch cosine from
    # step 1 on, instead of staying at the finished schedule's lr of 0.
    assert rows[1]["lr"] == pytest.approx(1e-3 * (1 + np.cos(np.pi / 3)) / 2)
    assert rows[2]["lr"] == pytest.approx(1e-3 * (1 + np.cos(2 * np.pi / 3)) / 2)


def _linear_trainer(x, classes, batch, val_batch=None, **kwargs):
    """A Trainer of one Linear layer with SGD over x and labels 0, 1, ..., classes - 1 again."""
    dataset = ndl.data.NDArrayDataset(x, np.arange(len(x)) % classes)
    model = ndl.nn.Linear(x.shape[1], classes)
    val = ndl.data.DataLoader(dataset, val_batch) if val_batch else None
    return Trainer(
        model,
        ndl.nn.SoftmaxLoss(),
        ndl.optim.SGD(model.parameters(), lr=0.1),
        train_data=ndl.data.DataLoader(dataset, batch),
        val_data=val,
        **kwargs,
    )


# ---- the Trainer's hooks ------------------------------------------------------------------------
def test_trainer_calls_its_hooks_in_order():
    calls = []

    class Recorder:
        def on_epoch_start(self, trainer, epoch):
            calls.append(("start", epoch))

        def after_backward(self, trainer):
            calls.append("backward")

        def after_step(self, trainer):
            calls.append(("step", trainer.steps))

        def reduce_totals(self, totals):
            calls.append(("totals", int(totals[2])))
            return totals

        def after_train_epoch(self, trainer, epoch):
            calls.append(("trained", epoch))

        def on_epoch_end(self, trainer, result):
            calls.append(("end", result.epoch, trainer.epoch))

    rng = np.random.default_rng(0)
    trainer = _linear_trainer(
        rng.random((6, 4)).astype(np.float32), 3, batch=4, val_batch=6, hooks=[Recorder()]
    )
    results = trainer.fit(2, start_epoch=1)  # resumed after epoch 1: epoch 2 only
    assert [r.epoch for r in results] == [2] and results[0].val is not None
    assert calls == [
        ("start", 2),
        "backward",
        ("step", 1),
        "backward",
        ("step", 2),
        ("totals", 6),
        ("trained", 2),
        ("totals", 6),
        ("end", 2, 2),
    ]
    with pytest.raises(TypeError, match="has none of"):
        Trainer(trainer.model, ndl.nn.SoftmaxLoss(), hooks=[object()])
    with pytest.raises(ValueError, match="needs an optimizer"):
        Trainer(trainer.model, ndl.nn.SoftmaxLoss()).run_epoch(True, trainer.train_data)


# ---- divergence, user errors, damaged checkpoints (issue 13) ------------------------------------
def test_diverged_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    assert run(tmp_path, epochs=1) == 0
    good = (tmp_path / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run(tmp_path, "--lr", "1e30", epochs=2)
    assert stop.value.code not in (0, None)
    assert "diverged" in str(stop.value.code) and "\n" not in str(stop.value.code)
    assert "train_loss nan" not in capsys.readouterr().out
    assert (tmp_path / "checkpoint.npz").read_bytes() == good
    json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)


def test_metrics_json_has_no_nan_literals(tmp_path):
    cli.write_metrics(str(tmp_path), [{"epoch": 1, "train_loss": float("nan"), "x": np.inf}])
    rows = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert rows == [{"epoch": 1, "train_loss": None, "x": None}]


def test_trainer_stops_on_a_non_finite_loss_or_gradient():
    from needle.apps.trainer import TrainingDiverged

    x = np.ones((4, 3), dtype=np.float32)
    x[0, 0] = np.nan
    trainer = _linear_trainer(x, 2, batch=4, clip=1.0)
    with pytest.raises(TrainingDiverged, match="nan"):
        trainer.fit(1)


TRAIN_FLAGS = (
    "--batch-size 0,--batch-size -1,--epochs 0,--epochs -2,--max-batches 0,--lr -1,"
    "--accumulate 0,--accumulate -2,--accumulate two,--profile 0,--profile -1"
)
BAD_FLAGS = f"{TRAIN_FLAGS},--max-batches -3,--lr nan,--lr inf,--weight-decay -0.1,--epochs two"


@pytest.mark.parametrize(
    "command,flag",
    [("train", f) for f in BAD_FLAGS.split(",")]
    + [("bench", f) for f in ("--threads 0", "--repeats 0", "--sizes x")],
)
def test_bad_flags_are_one_line_naming_the_flag(command, flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--out", str(tmp_path), *flag.split()])
    assert stop.value.code == 1 and one_line_error(capsys, f"argument {flag.split()[0]}")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["train", "bench"])
def test_unwritable_out_is_one_line(command, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as stop:
        if command == "train":
            run(blocker / "out")
        else:
            cli.main(["bench", "--tiny", "--workloads", "matmul", "--out", str(blocker / "out")])
    assert stop.value.code != 0 and str(blocker) in str(stop.value.code)
    assert "needle bench (tiny)" not in capsys.readouterr().out  # stopped before measuring


def test_damaged_mnist_data_is_one_line(tmp_path, capsys):
    for name in ["train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"]:
        (tmp_path / f"{name}-ubyte.gz").write_text("not gzip")
    assert run(tmp_path / "out", "--data-dir", str(tmp_path)) == 1
    assert one_line_error(capsys, "needle train: ")


def test_resume_with_another_models_checkpoint_says_so(tmp_path):
    save_checkpoint(
        str(tmp_path / "checkpoint.npz"), ndl.nn.Linear(2, 2), meta={"config": {"model": "resnet9"}}
    )
    with pytest.raises(SystemExit, match="holds a resnet9 model, not mlp-resnet"):
        run(tmp_path, "--resume")


@pytest.mark.parametrize(
    "how,pattern",
    [
        ("text", "not an .npz"),
        ("cut", "npz"),
        ("meta", "no meta"),
        ("nan", "NaN"),
        ("j", "complex"),
    ],
)
def test_damaged_checkpoint_is_one_line(how, pattern, tmp_path, capsys):
    assert run(tmp_path, epochs=1) == 0
    path = tmp_path / "checkpoint.npz"
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    weight = next(k for k in arrays if k.startswith("model/"))
    if how in ("nan", "j"):
        arrays[weight] = arrays[weight] * (np.nan if how == "nan" else 1j)
    np.savez(path, **{k: v for k, v in arrays.items() if k != how})
    if how in ("text", "cut"):
        path.write_bytes(b"epoch 1\n" if how == "text" else path.read_bytes()[:1000])
    capsys.readouterr()
    assert run(tmp_path, "--resume", epochs=2) == 1 and one_line_error(capsys, pattern)


def test_resume_refuses_a_new_lr_or_weight_decay(tmp_path):
    assert run(tmp_path, "--lr", "0.002", epochs=1) == 0
    with pytest.raises(SystemExit, match="--lr"):
        run(tmp_path, "--resume", "--lr", "0.01", epochs=2)
    with pytest.raises(SystemExit, match="--weight-decay"):
        run(tmp_path, "--resume", "--weight-decay", "0.5", epochs=2)
    assert run(tmp_path, "--resume", epochs=2) == 0  # continues with the checkpoint's lr
    with np.load(tmp_path / "checkpoint.npz") as saved:
        assert json.loads(str(saved["meta"]))["config"]["lr"] == 0.002


def test_orphan_checkpoint_temporaries_are_removed_and_the_directory_synced(tmp_path, monkeypatch):
    from needle import serialization

    orphan = tmp_path / ".checkpoint.npz.999999999.tmp"
    orphan.write_bytes(b"torn")
    synced = []
    real = serialization._fsync_directory
    monkeypatch.setattr(serialization, "_fsync_directory", lambda d: (synced.append(d), real(d)))
    assert run(tmp_path, epochs=1) == 0
    assert not orphan.exists()
    assert synced and all(Path(d) == tmp_path for d in synced)


# Ctrl-C in epoch 1 batch 2, epoch 2 batch 2 and 4, and while epoch 2's metrics are written.
@pytest.mark.parametrize("where,at", [(Trainer, 2), (Trainer, 6), (Trainer, 8), (cli, 2)])
def test_interrupt_mid_epoch_then_resume_is_bit_exact(where, at, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert run(straight, epochs=3) == 0
    name = "train_step" if where is Trainer else "write_metrics"
    original, calls = getattr(where, name), {"n": 0}

    def interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(where, name, interrupt)
    assert run(interrupted, epochs=3) == 130
    monkeypatch.setattr(where, name, original)
    assert run(interrupted, "--resume", epochs=3) == 0
    assert history_without_times(interrupted) == history_without_times(straight)
    with np.load(straight / "checkpoint.npz") as a, np.load(interrupted / "checkpoint.npz") as b:
        for key in a.files:
            if key != "meta":
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---- --device webgpu -------------------------------------------------------------------------
def _needle(tmp_path, *args, **env):
    """`python -m needle ARGS` in a subprocess: (exit status, stdout, stderr). The environment
    gets a private XDG_RUNTIME_DIR if it has none: without one, Mesa's Vulkan drivers write an
    error line on stderr."""
    env = dict(os.environ, **env)
    if not env.get("XDG_RUNTIME_DIR"):
        runtime = tmp_path / "xdg"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    result = subprocess.run(
        [sys.executable, "-m", "needle", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, result.stdout, result.stderr


WEBGPU_TRAIN = "train --device webgpu --epochs 1 --no-progress --max-batches"


def test_train_on_webgpu_matches_the_cpu(tmp_path):
    device = ndl.webgpu()
    if not device.enabled():
        pytest.skip(f"webgpu is disabled here: {device.reason}")
    out = tmp_path / "webgpu"
    status, stdout, stderr = _needle(tmp_path, *WEBGPU_TRAIN.split(), "3", "--out", str(out))
    assert status == 0, stderr
    assert "device webgpu()" in stdout and "done: validation accuracy" in stdout
    row = history_without_times(out)[0]
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    # The same seed, batches and model as on the CPU: the same losses, up to float32 rounding.
    assert run(tmp_path / "cpu", "--device", "cpu_numpy", epochs=1, max_batches=3) == 0
    reference = history_without_times(tmp_path / "cpu")[0]
    for key in ("train_loss", "val_loss"):
        assert row[key] == pytest.approx(reference[key], rel=1e-3), key


def test_train_on_a_disabled_webgpu_is_one_line_with_the_reason(tmp_path):
    status, _, stderr = _needle(
        tmp_path,
        *WEBGPU_TRAIN.split(),
        "1",
        "--out",
        str(tmp_path / "out"),
        NEEDLE_WEBGPU_ADAPTER="no-such-adapter",
    )
    assert status == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("needle train: device webgpu is not available: "), stderr
    if ndl.webgpu().enabled():  # wgpu and an adapter are here: the name is what fails
        assert "no-such-adapter" in stderr
    else:  # no wgpu or no adapter at all: the same reason as in this process
        assert " ".join(str(ndl.webgpu().reason).split()) in stderr
    assert not (tmp_path / "out").exists()


def test_train_on_an_adapter_without_int64_matches_the_cpu(tmp_path):
    """Mesa's OpenGL adapter has no 64-bit integers: the class labels (int64) live there as
    pairs of 32-bit words, and training gives the CPU's losses."""
    if not ndl.webgpu().enabled():
        pytest.skip(f"webgpu is disabled here: {ndl.webgpu().reason}")
    import wgpu

    if not any("OpenGL" in a.info["backend_type"] for a in wgpu.gpu.enumerate_adapters_sync()):
        pytest.skip("no OpenGL adapter here (the one without shader-int64)")
    out = tmp_path / "opengl"
    status, _, stderr = _needle(
        tmp_path, *WEBGPU_TRAIN.split(), "3", "--out", str(out), NEEDLE_WEBGPU_ADAPTER="OpenGL"
    )
    assert status == 0, stderr
    row = history_without_times(out)[0]
    assert run(tmp_path / "cpu", "--device", "cpu_numpy", epochs=1, max_batches=3) == 0
    reference = history_without_times(tmp_path / "cpu")[0]
    for key in ("train_loss", "val_loss"):
        assert row[key] == pytest.approx(reference[key], rel=1e-3), key


def saved_steps_and_config(out):
    """(Adam's step count t, the run config) of the checkpoint in `out`."""
    with np.load(out / "checkpoint.npz") as saved:
        return int(saved["optim/hyper/t"]), json.loads(str(saved["meta"]))["config"]


def test_accumulate_steps_once_per_n_batches_and_resumes_only_with_n(tmp_path):
    """mlp-resnet has BatchNorm and dropout, so --accumulate 2 does not equal a batch twice
    as large (tests/test_accumulate.py checks that on a model without them): here Adam's step
    count shows one update per 2 batches, the losses stay finite, and the checkpoint's N is
    the only one --resume accepts."""
    plain, accumulated = tmp_path / "plain", tmp_path / "accumulated"
    assert run(plain, epochs=1, max_batches=4) == 0
    assert run(accumulated, "--accumulate", "2", epochs=1, max_batches=4) == 0
    plain_steps, plain_config = saved_steps_and_config(plain)
    steps, config = saved_steps_and_config(accumulated)
    assert (plain_steps, plain_config["accumulate"]) == (4, 1)
    assert (steps, config["accumulate"]) == (2, 2)
    rows = history_without_times(accumulated)
    assert all(np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"]) for row in rows)
    assert rows[0]["train_loss"] != history_without_times(plain)[0]["train_loss"]
    with pytest.raises(SystemExit, match="--accumulate 2; drop --accumulate 3"):
        run(accumulated, "--resume", "--accumulate", "3", epochs=2, max_batches=4)
    with pytest.raises(SystemExit, match="--accumulate 1; drop --accumulate 2"):
        run(plain, "--resume", "--accumulate", "2", epochs=2, max_batches=4)
    assert run(accumulated, "--resume", epochs=2, max_batches=4) == 0  # the checkpoint's 2
    assert saved_steps_and_config(accumulated)[0] == 4


def test_resume_of_a_checkpoint_without_accumulate_means_one(tmp_path):
    """Checkpoints written before --accumulate existed have no such key: they ran with 1."""
    assert run(tmp_path, epochs=1, max_batches=2) == 0
    path = tmp_path / "checkpoint.npz"
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["config"]["accumulate"]
    arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(SystemExit, match="--accumulate 1; drop --accumulate 2"):
        run(tmp_path, "--resume", "--accumulate", "2", epochs=2, max_batches=2)
    assert run(tmp_path, "--resume", "--accumulate", "1", epochs=2, max_batches=2) == 0
    assert saved_steps_and_config(tmp_path) == (4, {**meta["config"], "accumulate": 1})


def test_compiled_updates_train_to_the_same_bits(tmp_path):
    """--compile: Adam, dropout, batch norm and a cosine schedule (a new lr each epoch records
    again); the same metrics and weights as eager updates."""
    assert run(tmp_path / "eager", epochs=3, max_batches=5) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to eager
        assert run(tmp_path / "compiled", "--compile", epochs=3, max_batches=5) == 0
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert history_without_times(compiled) == history_without_times(eager)
    with np.load(eager / "checkpoint.npz") as a, np.load(compiled / "checkpoint.npz") as b:
        for key in a.files:
            if key != "meta":
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)

"""--log-to (log_sinks.py): metrics.jsonl is always written; W&B (offline) and TensorBoard receive the same scalars
at the same steps, read back here with their own readers (TensorBoard's EventAccumulator; the records of the W&B
run file, parsed with W&B's protobuf schema); a sink whose package is missing is one error line and exit 2, before
the run writes anything. The sink tests skip when their package is absent (the `logging` extra)."""
from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from cs336_alignment.__main__ import main
from cs336_alignment.train.log_sinks import MissingPackageError, check_installed, parse_log_to
from cs336_alignment.train.common import read_metrics

# the smallest pretraining run that logs: 4 steps, a line every 2, an eval at steps 2 and 4
PRETRAIN = ["pretrain", "--num-steps", "4", "--log-every", "2", "--eval-every", "2", "--d-model", "16",
            "--num-layers", "1", "--num-heads", "2", "--d-ff", "32", "--context-length", "32", "--n-problems", "40",
            "--batch-size", "2", "--eval-batches", "1", "--quiet", "--device", "cpu"]


def jsonl_scalars(out: Path) -> dict[str, dict[int, float]]:
    """{name: {step: value}} of every record metrics.jsonl holds."""
    scalars: dict[str, dict[int, float]] = {}
    for record in read_metrics(out / "metrics.jsonl"):
        for name, value in record.items():
            if name != "step":
                scalars.setdefault(name, {})[record["step"]] = value
    return scalars


def test_parse_log_to_names_dedupes_and_rejects_unknown_sinks():
    assert parse_log_to("") == []
    assert parse_log_to("wandb, tensorboard,wandb") == ["wandb", "tensorboard"]
    assert parse_log_to("jsonl,tensorboard") == ["tensorboard"]  # metrics.jsonl is always written
    with pytest.raises(ValueError, match="unknown sink 'mlflow'"):
        parse_log_to("tensorboard,mlflow")


@pytest.mark.parametrize("sink", ["wandb", "tensorboard"])
def test_a_missing_package_is_one_error_line_before_the_run_writes(sink, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == sink else real(name, *a))
    with pytest.raises(MissingPackageError, match=f"needs the {sink} package: pip install"):
        check_installed(f"jsonl,{sink}")
    capsys.readouterr()
    assert main([*PRETRAIN, "--out", str(tmp_path / "run"), "--log-to", sink]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --log-to {sink} needs the {sink} package") and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_tensorboard_gets_the_scalars_of_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main([*PRETRAIN, "--out", str(out), "--log-to", "tensorboard"]) == 0
    expected = jsonl_scalars(out)
    assert {"loss/train", "eval/loss", "lr"} <= set(expected) and set(expected["loss/train"]) == {2, 4}
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert set(events.Tags()["scalars"]) == set(expected)
    for name, by_step in expected.items():
        written = {e.step: e.value for e in events.Scalars(name)}
        assert written == pytest.approx(by_step, rel=1e-6), name  # TensorBoard stores float32


def wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B run file: a 7-byte header (":W&B", magic, version), then LevelDB-log records in 32 KiB
    blocks, each a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes."""
    data, block, pos = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, pending = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records


def test_wandb_offline_gets_the_scalars_of_metrics_jsonl(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
                        "WANDB_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    assert main([*PRETRAIN, "--out", str(out), "--log-to", "wandb"]) == 0
    expected = jsonl_scalars(out)
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    history: dict[str, dict[int, float]] = {}
    config = None
    for raw in wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            for name, value in items.items():
                if not name.startswith("_"):  # W&B's own _step, _runtime, _timestamp
                    history.setdefault(name, {})[items["_step"]] = value
        elif record.WhichOneof("record_type") == "run":
            config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
    assert history == expected
    assert config["num_steps"] == 4 and config["log_to"] == "wandb"

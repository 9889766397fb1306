"""Values too large, of the wrong kind or too deep fail as one short line, before any data is
loaded or any server waited on (issue 22's bounds): configs, config files, awd.evaluate's
sampling flags, an unreachable tracking server, a --from that is not a dataset."""

from __future__ import annotations

import json
import time

import pytest

from awd.config import from_flat
from awd.data.fetch import import_local
from awd.errors import ConfigError, DataError

BIG = "9" * 5_000_000


@pytest.mark.parametrize("overrides,message", [
    ({"lr": 1e308}, "lr must be a finite number > 0 that float32 can hold"),
    ({"wdecay": 1e308}, "wdecay must be a finite number >= 0 that float32 can hold"),
    ({"clip": 3.5e38}, "clip must be"),
    ({"lr": True}, "lr: cannot use True (expected float)"),
    ({"epochs": True}, "epochs: cannot use True"),
    ({"epochs": 1e308}, "epochs must be"),
    ({"epochs": 2_000_000}, "epochs must be <= 1,000,000"),
    ({"batch_size": 2**40}, "batch_size must be"),
    ({"seed": BIG}, "seed: cannot use"),
    ({"dataset": "x" * 5_000_000}, "dataset must be a dataset name or folder"),
    ({"dataset": "a\x00b"}, "dataset must be"),
    ({"optimizer": "o" * 5_000_000}, "optimizer must be one of"),
    ({"lr": "fast"}, "lr: cannot use 'fast'"),
])
def test_bad_config_values_are_one_short_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        from_flat({"model": "awd_lstm", **overrides})
    text = str(e.value)
    assert message in text
    assert len(text) < 300 and "\n" not in text


def test_an_unknown_model_or_field_is_quoted_short():
    for flat in ({"model": "m" * 1_000_000}, {"model": "awd_lstm", "k" * 1_000_000: 1}):
        with pytest.raises(ConfigError) as e:
            from_flat(flat)
        assert "(1,000,002 characters)" in str(e.value)  # a prefix, then the size
        assert len(str(e.value)) < 1000  # the list of known fields included


@pytest.mark.parametrize("content,message", [
    ("{\"model\": \"awd_lstm\", \"note\": \"caf\xe9\"}".encode("latin-1"), "not UTF-8"),
    (("[" * 100_000 + "]" * 100_000).encode(), "nests too deeply"),
    (json.dumps({"model": "awd_lstm", "lr": 1e308}).encode(), "float32 can hold"),
    (json.dumps({"model": "awd_lstm", "lr": True}).encode(), "lr: cannot use True"),
    (json.dumps({"model": "awd_lstm", "seed": "9" * 500_000}).encode(), "seed: cannot use"),
    (b"{\"model\": \"awd_lstm\", \"x\": \"" + b"y" * 2_000_000 + b"\"}", "limit 1,048,576"),
])
def test_config_files_that_cannot_work_are_refused_before_the_data(content, message, tmp_path,
                                                                    monkeypatch, capsys):
    from awd.train import main

    path = tmp_path / "config.json"
    path.write_bytes(content)
    monkeypatch.setenv("AWD_DATA_DIR", str(tmp_path / "no-data-here"))
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert len(err) < 400 and "no-data-here" not in err


@pytest.mark.parametrize("args,message", [
    (["--generate", "1000000000000"], "--generate must be 0 to 100,000 words"),
    (["--generate", "3", "--temperature", "inf"], "--temperature must be a finite number"),
    (["--generate", "3", "--temperature", "nan"], "--temperature must be a finite number"),
])
def test_sampling_flags_have_bounds(args, message, capsys):
    from awd.evaluate import main

    assert main(["--model-uri", "nowhere.pt", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_an_unreachable_tracking_server_is_one_line_within_seconds(monkeypatch, capsys):
    """The command in-process (MLflow's HTTP settings it sets are undone after the test)."""
    from search.evaluate import main
    from search.uris import MLFLOW_HTTP_DEFAULTS

    for name in MLFLOW_HTTP_DEFAULTS:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    start = time.monotonic()
    code = main(["--model-uri", "models:/awdsearch-smoke/1", "--tracking-uri",
                 "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "cannot reach the MLflow tracking server at http://127.0.0.1:1" in err
    assert time.monotonic() - start < 30


def test_a_from_that_is_not_a_dataset_is_refused_before_any_install_check(tmp_path):
    junk = tmp_path / "passwd"
    junk.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(DataError, match="neither a folder of splits nor a zip or tar"):
        import_local("ptb", junk, dest=tmp_path / "ptb")
    with pytest.raises(DataError):
        import_local("ptb", tmp_path, dest=tmp_path / "ptb2")  # a folder without splits

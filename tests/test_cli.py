"""User errors on the command line: one line naming the file / key / column and what was expected,
exit status 2, no traceback (``--debug`` shows it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.synthetic import SyntheticConfig, generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "syn"
    generate(
        SyntheticConfig(
            out=out,
            rows=600,
            items=50,
            users=20,
            history_mean=4.0,
            history_max=8,
            modalities=("title", "meta"),
            tokens=(3, 5),
            width=(8, 4),
            seed=1,
        )
    )
    return out


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _one_line_error(out: subprocess.CompletedProcess, expected: str) -> None:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], out.stderr[-3000:]


def test_unknown_config_key() -> None:
    out = _run("em3rec.train", "--config", "din_em3", "--set", "model.backbone_typo=din")
    _one_line_error(out, "error: model: unknown key(s) ['backbone_typo']; known: [")


def test_unknown_config_file() -> None:
    out = _run("em3rec.evaluate", "--config", "no_such_config")
    _one_line_error(out, "error: config 'no_such_config' not found; bundled configs: [")


def test_missing_dataset(tmp_path: Path) -> None:
    out = _run("em3rec.train", "--config", "din_em3", "--set", f"data.path={tmp_path / 'nowhere'}")
    _one_line_error(out, f"error: {tmp_path / 'nowhere' / 'meta.json'}: missing; prepare the dataset first")


def _train_small(data: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``em3rec.train`` on ``data`` with a small batch and history, runs under ``tmp_path``."""
    return _run(
        "em3rec.train",
        "--config",
        "din_em3",
        "--set",
        f"data.path={data}",
        "--set",
        "data.max_history=8",
        "--set",
        "data.batch_size=32",
        "--set",
        f"train.run_dir={tmp_path / 'runs'}",
    )


def test_bad_parquet(dataset: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(dataset, tmp_path / "bad"))
    victim = sorted((data / "valid").glob("*.parquet"))[0]
    victim.write_bytes(b"PAR1 not really")
    out = _train_small(data, tmp_path)
    _one_line_error(out, f"error: {victim.parent}: cannot open as Parquet (")
    assert f"Could not open Parquet input source '{victim}'" in out.stderr


def test_bad_column_type(dataset: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = Path(shutil.copytree(dataset, tmp_path / "bad"))
    for file in (data / "test").glob("*.parquet"):
        table = pq.read_table(file)
        pq.write_table(
            table.set_column(table.schema.get_field_index("label"), "label", table["label"].cast(pa.float64())), file
        )
    out = _train_small(data, tmp_path)
    _one_line_error(out, "column 'label' has type double; expected float32")


def test_no_checkpoint_to_evaluate(dataset: Path, tmp_path: Path) -> None:
    out = _run(
        "em3rec.evaluate", "--config", "din_em3", "--set", f"data.path={dataset}", "--set", f"train.run_dir={tmp_path}"
    )
    _one_line_error(out, "no best checkpoint (train first, or pass --checkpoint DIR)")


def test_config_that_does_not_fit_the_dataset(dataset: Path, tmp_path: Path) -> None:
    out = _run(
        "em3rec.train", "--config", "din_em3", "--set", f"data.path={dataset}", "--set", f"train.run_dir={tmp_path}"
    )
    _one_line_error(out, "error: data.max_history = 50; expected 1 <= max_history <= 8")


def test_debug_shows_the_traceback() -> None:
    out = _run("em3rec.train", "--config", "din_em3", "--set", "model.backbone_typo=din", "--debug")
    assert out.returncode != 0
    assert (
        "Traceback" in out.stderr and "em3rec.config.ConfigError: model: unknown key(s) ['backbone_typo']" in out.stderr
    )

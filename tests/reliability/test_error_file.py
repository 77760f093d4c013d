"""A rank's torchrun error file: complete or absent, never half-written (em3rec.error_file).

The agent parses the file with torch's own ``ProcessFailure``; these tests read it the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from em3rec import cli, error_file
from em3rec.errors import UserError


def _agent_reads(path: Path) -> ProcessFailure:
    """What torchrun's agent makes of a worker that exited with status 1 and this error file."""
    return ProcessFailure(local_rank=0, pid=1234, exitcode=1, error_file=str(path))


@pytest.fixture
def error_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "attempt_0" / "0" / "error.json"
    path.parent.mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    return path


def test_record_writes_the_exception_as_the_agent_reads_it(error_path: Path) -> None:
    @error_file.record
    def main() -> None:
        raise RuntimeError("Connection closed by peer")

    with pytest.raises(RuntimeError):
        main()
    failure = _agent_reads(error_path)
    assert failure.message["message"] == "RuntimeError: Connection closed by peer"
    assert "raise RuntimeError" in failure.message["extraInfo"]["py_callstack"]
    assert [p.name for p in error_path.parent.iterdir()] == ["error.json"]  # no temporary left


def test_a_rank_stopped_while_writing_leaves_no_error_file(error_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's SIGTERM lands mid-write: the file stays absent, so the agent reports the exit code
    (torch's own handler leaves an empty file there, and the agent dies parsing it)."""

    def dump_then_stop(data: object, fp) -> None:  # noqa: ANN001
        fp.write(json.dumps(data)[:10])
        raise KeyboardInterrupt  # stands in for the signal: the process ends here

    monkeypatch.setattr(error_file.json, "dump", dump_then_stop)
    try:
        raise RuntimeError("Connection closed by peer")
    except RuntimeError as e:
        with pytest.raises(KeyboardInterrupt):
            error_file.ERROR_HANDLER.record_exception(e)
    assert not error_path.exists()
    failure = _agent_reads(error_path)
    assert failure.error_file == "<N/A>" and failure.message.startswith("To enable traceback")  # no reply file


def test_a_user_error_reaches_the_error_file_and_one_line_on_stderr(
    error_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    @cli.user_errors
    def main(argv: list[str] | None = None) -> None:
        raise UserError("data.path = 'nowhere': no such folder")

    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == cli.USER_ERROR_EXIT
    assert capsys.readouterr().err == "error: data.path = 'nowhere': no such folder\n"
    assert _agent_reads(error_path).message["message"] == "UserError: data.path = 'nowhere': no such folder"

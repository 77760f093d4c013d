"""A rank's torchrun error file: complete or absent, never half-written (em3rec.error_file).

The agent parses the file with torch's own ``ProcessFailure``; these tests read it the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from em3rec import cli, error_file
from em3rec.errors import UserError
from tests.train.conftest import ROOT


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


WORKER = """
import json, os, signal, sys, time

from torch.distributed.elastic.multiprocessing.errors import ErrorHandler, record as torch_record

from em3rec import error_file

handler, marker = sys.argv[1], sys.argv[2]


def slow_dump(data, fp):  # rank 0's error file, half-written when its peer dies
    text = json.dumps(data)
    fp.write(text[:10])
    fp.flush()
    open(marker, "w").close()
    time.sleep(60)  # torchrun's agent SIGTERMs this rank in here
    fp.write(text[10:])


def main():
    if int(os.environ["RANK"]) == 0:
        json.dump = slow_dump
        raise RuntimeError("Connection closed by peer")
    while not os.path.exists(marker):
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGKILL)  # rank 1 dies first, as in the SIGKILL restart test


main = error_file.record(main) if handler == "atomic" else torch_record(main, error_handler=ErrorHandler())
main()
"""


@pytest.mark.multiprocess
@pytest.mark.parametrize("handler", ["atomic", "torch"])
def test_torchrun_agent_survives_a_rank_killed_while_writing_its_error_file(handler: str, tmp_path: Path) -> None:
    """Real torchrun, 2 ranks: rank 0 is mid-way through its error file when rank 1 is SIGKILLed,
    so the agent SIGTERMs rank 0 there. With torch's handler the agent itself dies parsing the
    half-written file (the control: the race is real); with ours it reports both ranks' failures."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=0"]
    cmd += [str(script), handler, str(tmp_path / "rank0_writing")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-4000:]
    if handler == "torch":
        assert "JSONDecodeError" in out, out[-4000:]
        return
    assert "JSONDecodeError" not in out and "ChildFailedError" in out, out[-4000:]
    assert "Signal 9 (SIGKILL)" in out, out[-4000:]

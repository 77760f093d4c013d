from benchmarks import openmp_teams


def test_reports_every_scenario_and_its_command(tmp_path):
    out = tmp_path / "teams.md"
    openmp_teams.main(["--threads", "2", "--calls", "20", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("Command: `python -m benchmarks.openmp_teams --threads 2 --calls 20")
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.endswith("x |")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(openmp_teams.SCENARIOS)

from benchmarks import onednn_shapes


def test_reports_every_dtype_and_its_command(tmp_path):
    out = tmp_path / "shapes.md"
    onednn_shapes.main(["--calls", "2", "--rows", "64", "--width", "32", "--out-width", "16", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("Command: `python -m benchmarks.onednn_shapes --calls 2")
    rows = [line for line in text.splitlines() if line.startswith("| bfloat16") or line.startswith("| float32")]
    assert len(rows) == 2 and all(line.count(" ms") == 4 for line in rows)

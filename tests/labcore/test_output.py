"""Console output fit for log files: progress lines instead of redrawn bars."""

import io

from labcore.output import ProgressLines, format_duration, progress


def test_progress_lines_every_tenth_and_at_the_end():
    out = io.StringIO()
    lines = ProgressLines("[train] step", total=1000, unit="steps", every_s=1e9, stream=out)
    for step in range(1, 1001):
        lines.update(step, extra="loss 0.5")
    text = out.getvalue().splitlines()
    assert len(text) == 10 and "\r" not in out.getvalue()
    assert text[0].startswith("[train] step 100/1000 (10%)") and "ETA" in text[0] and text[0].endswith("loss 0.5")
    assert text[-1].startswith("[train] step 1000/1000 (100%)") and " in " in text[-1]


def test_progress_lines_by_time_when_the_total_is_unknown():
    out = io.StringIO()
    lines = ProgressLines("work", total=None, every_s=0.0, stream=out)
    for n in (1, 2, 2, 3):  # an unchanged count prints nothing new
        lines.update(n)
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["1", "2", "3"]


def test_progress_in_a_log_file_yields_everything(capsys):
    assert list(progress(range(25), desc="rows", unit="row")) == list(range(25))
    printed = capsys.readouterr().out  # pytest's stdout is not a terminal: lines, not a bar
    assert "rows 25/25 (100%)" in printed and "\r" not in printed


def test_format_duration():
    assert (format_duration(5), format_duration(125), format_duration(3725)) == ("0:05", "2:05", "1:02:05")

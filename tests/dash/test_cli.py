import json
import subprocess
import sys
from pathlib import Path

import pytest

from dash import cli
from tests.dash import events as ev

ROOT = Path(__file__).resolve().parents[2]


def dash(*args, stdin=subprocess.DEVNULL):
    return subprocess.run(
        [sys.executable, "-m", "dash", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        stdin=stdin,
    )


@pytest.fixture
def recording(tmp_path):
    path = tmp_path / "run.jsonl"
    events = [*ev.episode_events(steps=3), ev.train(), ev.credit()]
    path.write_text("".join(json.dumps(ev.record(e)) + "\n" for e in events))
    return path


def test_snapshot_of_a_replay_is_plain_text(recording):
    out = dash("--replay", str(recording), "--snapshot", "--size", "120x40", "--speed", "100")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and len(out.stdout.splitlines()) == 40
    assert 'Tok[2]: "t2"' in out.stdout and "TOKEN CREDIT  step 3" in out.stdout


def test_not_a_tty_points_at_snapshot(recording):
    out = dash("--replay", str(recording))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "--snapshot" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replay", "nope.jsonl"], "no such file"),
        (["--fps", "0"], "--fps must be > 0"),
        (["--size", "huge"], "expected COLSxROWS"),
        (["--size", "80x24"], "at least 100x30"),
        (["--image", "x.png"], "--image and --prompt are for --model DIR"),
        (["--model", "/nonexistent/dir"], "--model"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_inputs_give_one_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(cli.main([*args, "--snapshot"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_model_and_image_paths_are_checked_before_loading(tmp_path, capsys):
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    assert cli.main(["--model", str(a_file), "--snapshot"]) == 2
    assert "not a directory" in capsys.readouterr().err
    args = ["--model", str(tmp_path), "--image", str(tmp_path / "none.png"), "--snapshot"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--image" in err and "not found" in err


def test_malformed_replay_line_is_named(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ev.record(ev.run_info())) + "\n{oops\n")
    assert cli.main(["--replay", str(path), "--snapshot"]) == 2
    assert "line 2: not JSON" in capsys.readouterr().err


def test_unknown_records_are_counted_in_the_header(recording, capsys):
    with open(recording, "a") as f:
        f.write('{"type": "telepathy"}\n')
    assert cli.main(["--replay", str(recording), "--snapshot", "--speed", "100"]) == 0
    assert "1 unknown record(s) skipped" in capsys.readouterr().out


def test_dash_never_imports_jax():
    code = "import sys, dash.cli, dash.app, dash.api, dash.sources; print('jax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr

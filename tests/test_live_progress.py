"""The one console display of long jobs (training, ``fiberlab ad collect``): plain lines at most
every 2 s unless forced, nothing in mode ``none``, messages always in plain mode."""
from __future__ import annotations

from fiberlab.rl.logging import LiveProgress, ProgressDisplay


def test_plain_lines_are_throttled_unless_forced(capsys) -> None:
    shown = LiveProgress("plain", "job", ("a",), lambda r: f"a={r['a']}")
    shown.update({"a": 1})
    shown.update({"a": 2})  # within 2 s of the first: not printed
    shown.update({"a": 3}, force=True)
    shown.say("hello")
    shown.close()
    assert capsys.readouterr().out.splitlines() == ["a=1", "a=3", "hello"]


def test_none_prints_nothing(capsys) -> None:
    quiet = LiveProgress("none", "job", ("a",), lambda r: "x")
    quiet.update({"a": 1}, force=True)
    quiet.say("hello")
    quiet.close()
    assert capsys.readouterr().out == ""


def test_training_display_prints_the_last_epoch_and_keeps_the_latest_return(capsys) -> None:
    display = ProgressDisplay("plain", total_steps=100, run="r")
    display.on_epoch_end({"agent_step": 50, "epoch": 1, "sps": 10.0, "episode_return": 0.5})
    display.on_epoch_end({"agent_step": 100, "epoch": 2, "sps": 10.0, "episode_return": None})  # the end: forced
    display.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[r] step 50/100 epoch 1 sps 10 return 0.5 eta 5s"
    assert lines[1] == "[r] step 100/100 epoch 2 sps 10 return 0.5 eta 0s"

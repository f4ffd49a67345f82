"""The stand-in polecat's bead lines for the patrol scenarios (pure parsing and shell text)."""

from __future__ import annotations

import pytest

from vermas.testing.standin.polecat import BeadScript, leave_command, sleep_command


def test_patrol_lines_are_parsed() -> None:
    script = BeadScript.parse("prose\nstandin: write a.txt = one\nstandin: leave b.txt = two\n"
                              "standin: sleep-once 120\nstandin: skip-done 1\nstandin: never-done\n")
    assert (script.writes, script.leaves) == ({"a.txt": "one"}, {"b.txt": "two"})
    assert (script.sleep, script.sleep_once, script.skip_done, script.never_done) == (120, True, 1, True)
    assert BeadScript.parse("standin: sleep 5").sleep_once is False


@pytest.mark.parametrize("line", ["standin: sleep", "standin: skip-done", "standin: never-done 3"])
def test_a_patrol_line_with_a_wrong_argument_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="take"):
        BeadScript.parse(line)


def test_the_shell_text() -> None:
    assert leave_command({"d/b.txt": "two"}) == "mkdir -p d && printf '%s\\n' two > d/b.txt"
    assert sleep_command(7, once=False) == "sleep 7"
    assert "standin-slept" in sleep_command(7, once=True) and "sleep 7" in sleep_command(7, once=True)

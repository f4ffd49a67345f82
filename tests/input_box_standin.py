"""A stand-in for Claude Code's input box, for real-tmux nudge tests: it draws an input box
the way Claude Code does (a prompt glyph between two horizontal rules, long input wrapped by
the terminal), appends every character it receives, deletes on Backspace, and on Enter logs
the submitted line as JSON to the file named by argv[1] and clears the box. ^C ends it, as it
ends Claude Code. argv[2], when given, caps the box's length: extra characters are dropped,
which shows what a nudge does when its text does not arrive whole.

Run as a script inside a tmux pane: python input_box_standin.py LOG [MAX_CHARS]
"""

from __future__ import annotations

import codecs
import json
import os
import sys
import tty

RULE = "─" * 80


def draw(text: str) -> None:
    frame = f"\x1b[H\x1b[2J  standin input box\r\n{RULE}\r\n❯ {text}\r\n{RULE}\r\n  ? for shortcuts"
    os.write(1, frame.encode())


def main() -> None:
    log_path = sys.argv[1]
    cap = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 30
    tty.setraw(0)
    decoder = codecs.getincrementaldecoder("utf-8")()
    text = ""
    draw(text)
    while True:
        data = os.read(0, 65536)
        if not data:
            return
        for char in decoder.decode(data):
            if char == "\x03":
                return
            if char == "\r":
                with open(log_path, "a", encoding="utf-8") as log:
                    log.write(json.dumps({"submitted": text}) + "\n")
                text = ""
            elif char in ("\x7f", "\x08"):
                text = text[:-1]
            elif len(text) < cap:
                text += char
        draw(text)


if __name__ == "__main__":
    main()

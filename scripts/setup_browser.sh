#!/usr/bin/env bash
# Headless browser for the report's browser test (tests/test_report_browser.py): Debian's
# chromium and its matching chromedriver, driven by Selenium. Idempotent: does nothing that is
# already done. Without apt-get (or without root/sudo) it says so and the browser test skips.
set -uo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
PY=${PYTHON:-python3}

if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null 2>&1; then
  echo "[setup-browser] installing Debian's chromium and chromium-driver"
  if ! { $SUDO apt-get update -qq >/dev/null \
         && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
              chromium chromium-driver fonts-dejavu-core >/dev/null; }; then
    echo "[setup-browser] chromium not installed; the browser test will be skipped"
  fi
fi
if ! $PY -c "import selenium" >/dev/null 2>&1; then
  echo "[setup-browser] installing selenium"
  $PY -m pip install -q "selenium>=4.10" || echo "[setup-browser] selenium not installed; the browser test will be skipped"
fi
exit 0

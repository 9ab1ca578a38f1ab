#!/usr/bin/env bash
# The test command (README; CI runs exactly this): set-up, then the whole test suite.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
bash scripts/setup_browser.sh  # headless Chromium + Selenium for tests/test_report_browser.py
python3 -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit $rc

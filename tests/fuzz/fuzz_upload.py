"""Coverage-guided fuzzing of ``fuzz.upload_harness.upload_one`` (see docs/fuzzing.md).

.venv/bin/python tests/fuzz/fuzz_upload.py -max_total_time=600 tests/data/fuzz/upload
"""

from __future__ import annotations

import sys

from harness import run

if __name__ == "__main__":
    run("upload_harness", "upload_one", sys.argv)

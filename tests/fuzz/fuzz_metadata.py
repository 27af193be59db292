"""Coverage-guided fuzzing of ``fuzz.targets.metadata_one`` (see docs/fuzzing.md).

.venv/bin/python tests/fuzz/fuzz_metadata.py -max_total_time=600 tests/data/fuzz/metadata
"""

from __future__ import annotations

import sys

from harness import run

if __name__ == "__main__":
    run("targets", "metadata_one", sys.argv)

"""Every input in tests/data/fuzz/<target>/ (the seeds and each reproducer of a fixed finding) replayed
through its target's entry function: the fuzz corpus is a regression suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fuzz.targets import metadata_one, pcap_one
from fuzz.upload_harness import UploadHarness, decode_case

CORPUS = Path(__file__).resolve().parents[2] / "data" / "fuzz"


def inputs(target: str) -> list[Path]:
    return sorted(p for p in (CORPUS / target).iterdir() if p.is_file())


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UploadHarness]:
    made = UploadHarness(tmp_path_factory.mktemp("upload-corpus"))
    yield made
    made.close()


@pytest.mark.parametrize("path", inputs("pcap"), ids=lambda p: p.name)
def test_pcap_corpus(path: Path) -> None:
    pcap_one(path.read_bytes())


@pytest.mark.parametrize("path", inputs("metadata"), ids=lambda p: p.name)
def test_metadata_corpus(path: Path) -> None:
    metadata_one(path.read_bytes())


@pytest.mark.parametrize("path", inputs("upload"), ids=lambda p: p.name)
def test_upload_corpus(path: Path, harness: UploadHarness) -> None:
    harness.run(decode_case(path.read_bytes()))


@pytest.mark.parametrize(
    ("target", "entry"), [("pcap", pcap_one), ("metadata", metadata_one)], ids=["pcap", "metadata"]
)
def test_every_corpus_has_seeds_that_are_accepted(target: str, entry: Callable[[bytes], object]) -> None:
    # The seeds are nearly valid on purpose: a seed every reader refuses would start the fuzzer nowhere.
    accepted = [
        p.name for p in inputs(target) if p.name.startswith("seed-") and entry(p.read_bytes()) is not None
    ]

    assert len(accepted) >= 3, accepted


def test_the_seed_corpus_is_small() -> None:
    files = [p for target in ("pcap", "metadata", "upload") for p in inputs(target)]

    assert len(files) < 100 and sum(p.stat().st_size for p in files) < 256 * 1024

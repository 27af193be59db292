"""report: the page's numbers against counts made in Python from the packet rows, its escaping, its
errors, and the ``report`` command.

The datasets are made by the real pipeline pieces (parser, enrichment, packets writer, DuckDB engine);
the expected numbers come from the enriched rows with ``ipaddress``, ``Counter`` and sets.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
import pytest

from survey6.aggregator.datasets import write_packets
from survey6.aggregator.engines import open_engine
from survey6.aggregator.enrich import enrich
from survey6.aggregator.errors import AggregatorError
from survey6.aggregator.parse import parse_bytes
from survey6.aggregator.report import SERIES_POINTS_MAX, Report, build_report, render_html, write_html
from survey6.aggregator.report_charts import bar_chart, step_area
from survey6.aggregator.report_cli import report_command
from survey6.aggregator.settings import AggregatorSettings, DatasetSettings
from survey6.common.cli import run_group
from survey6.wire.v1 import capture_pb2
from unit.aggregator.datasetbuild import MIDNIGHT_NS, NS_PER_S, SCANNER_64S, SCANNER_SWEEP, mixed_frames
from unit.aggregator.pcapbuild import Record, dns_message, ethernet, ipv6, pcap, sctp, udp

SETTINGS = DatasetSettings(series_interval_s=10, scanner_min_destinations=30, scanner_min_destination_64s=10)
# Rendered as markup, either would run a script that sets window.pwned.
HOSTILE_LABEL = "<script>window.pwned=1</script>"
HOSTILE_NAME = "<img src=x onerror=window.pwned=2>.example"
# The hostile queries come from one client per probe, in this /48: 2 sources over the selection, 1 in
# each of its 3 probe-days (so neither the largest nor the sum of the per-partition counts is right).
HOSTILE_48 = "2001:db8:e71::/48"
HOSTILE_QUERIES = 3
DAY_1, DAY_2 = "2023-11-14", "2023-11-15"
RARE_PROTOCOLS = [(50, bytes(32))] * 4 + [(132, sctp(5000, 5001))] * 3 + [(47, bytes(8))] * 2
PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 58: "ICMPv6", 50: "ESP", 132: "SCTP", 47: "GRE", 59: "no next header"}
PROTOCOLS_DRAWN = 5  # with more than 6, the five largest are drawn and the rest summed as "other"
PROG = "survey6-aggregate"
CAPTURES = (  # probe, sequence, seed, first packet, labels
    ("p-a", 1, 1, MIDNIGHT_NS + 3600 * NS_PER_S, {"site": "lab"}),
    ("p-a", 2, 2, MIDNIGHT_NS - 90 * NS_PER_S, {"site": "lab"}),  # across midnight: one file, two dates
    ("p-b", 1, 3, MIDNIGHT_NS + 7200 * NS_PER_S, {"site": "roof", "note": HOSTILE_LABEL}),
)


@dataclass(frozen=True)
class Built:
    root: Path
    rows: list[dict[str, Any]]  # every enriched packet row written, with "date"


def capture(seed: int, first_ns: int, probe_id: str) -> bytes:
    records = mixed_frames(seed, first_ns=first_ns, span_s=180)
    client = f"2001:db8:e71::{hashlib.sha256(probe_id.encode()).hexdigest()[:4]}"
    for i in range(HOSTILE_QUERIES):
        query = ipv6(
            client,
            "2001:db8:53::53",
            17,
            udp(40000 + i, 53, dns_message(HOSTILE_NAME, 28)),
        )
        records.append(Record(ethernet(query), first_ns + (i + 1) * NS_PER_S))
    # Rarer protocols, so that the chart has more than it draws on their own and sums some as "other".
    for i, (protocol, payload) in enumerate(RARE_PROTOCOLS):
        frame = ipv6("2001:db8:9::1", "2001:db8:9::2", protocol, payload)
        records.append(Record(ethernet(frame), first_ns + i * NS_PER_S // 10))
    return pcap(sorted(records, key=lambda r: r.ts_ns))


def enriched(data: bytes, probe_id: str, sequence: int, labels: dict[str, str]) -> pa.Table:
    meta = capture_pb2.CaptureMetadata(
        probe_id=probe_id,
        labels=labels,
        interface=capture_pb2.InterfaceFacts(name="eth0", link_type=1),
        sequence=sequence,
    )
    return enrich(parse_bytes(data), meta)


def build_datasets(root: Path, captures: tuple[tuple[str, int, int, int, dict[str, str]], ...]) -> Built:
    rows = []
    partitions = set()
    for probe_id, sequence, seed, first_ns, labels in captures:
        data = capture(seed, first_ns, probe_id)
        table = enriched(data, probe_id, sequence, labels)
        sha = hashlib.sha256(data).hexdigest()
        partitions.update(write_packets(table, root, sha256_hex=sha, sequence=sequence))
        rows += table.to_pylist()
    with contextlib.closing(open_engine(AggregatorSettings())) as engine:
        for partition in sorted(partitions):
            engine.build(root, partition, SETTINGS)
    for row in rows:
        row["date"] = dt.datetime.fromtimestamp(row["timestamp_ns"] // NS_PER_S, dt.UTC).date().isoformat()
    return Built(root, rows)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_datasets(tmp_path_factory.mktemp("datasets"), CAPTURES)


@pytest.fixture(scope="module")
def report(built: Built) -> Report:
    return build_report(built.root, top_n=5, settings=SETTINGS)


@pytest.fixture(scope="module")
def html(report: Report) -> str:
    return render_html(report)


# -- the oracle: plain Python over the rows -----------------------------------------------------------


def text(address: bytes) -> str:
    return str(ipaddress.IPv6Address(address))


def prefix(address: bytes, bits: int) -> str:
    return str(ipaddress.IPv6Network((int.from_bytes(address, "big") >> (128 - bits) << (128 - bits), bits)))


def ranked(counts: Counter[str], n: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def scanner_oracle(rows: list[dict[str, Any]]) -> dict[str, tuple[bool, bool, int]]:
    """Each candidate source → (met destinations, met /64s, most destinations in one probe-day)."""
    reached: dict[tuple[str, str, str], tuple[set[bytes], set[int]]] = defaultdict(lambda: (set(), set()))
    for r in rows:
        destinations, nets = reached[(r["date"], r["probe_id"], text(r["src"]))]
        destinations.add(r["dst"])
        nets.add(r["dst_prefix64"])
    found: dict[str, tuple[bool, bool, int]] = {}
    for (_, _, src), (destinations, nets) in reached.items():
        by_destinations = len(destinations) >= SETTINGS.scanner_min_destinations
        by_nets = len(nets) >= SETTINGS.scanner_min_destination_64s
        if by_destinations or by_nets:
            before = found.get(src, (False, False, 0))
            found[src] = (
                before[0] or by_destinations,
                before[1] or by_nets,
                max(before[2], len(destinations)),
            )
    return found


# -- the numbers ----------------------------------------------------------------------------------------


def test_the_summary_counts_what_the_packets_hold(built: Built, report: Report) -> None:
    rows, summary = built.rows, report.summary

    assert (summary.packets, summary.bytes) == (len(rows), sum(r["wire_length"] for r in rows))
    assert summary.sources_128 == len({r["src"] for r in rows})
    assert summary.sources_64 == len({prefix(r["src"], 64) for r in rows})
    assert summary.sources_48 == len({prefix(r["src"], 48) for r in rows})
    assert summary.dates == (DAY_1, DAY_2)
    assert summary.partitions == 3  # p-a on both days, p-b on the second
    assert summary.files == len(CAPTURES)  # the capture across midnight is one file
    assert [(p.probe_id, p.packets, p.files) for p in summary.probes] == [
        ("p-a", sum(r["probe_id"] == "p-a" for r in rows), 2),
        ("p-b", sum(r["probe_id"] == "p-b" for r in rows), 1),
    ]
    assert summary.probes[1].labels == ("note=" + HOSTILE_LABEL, "site=roof")
    assert report.notes == ()


def test_top_sources_and_48s_are_the_largest_senders(built: Built, report: Report) -> None:
    by_source = Counter(text(r["src"]) for r in built.rows)
    by_48 = Counter(prefix(r["src"], 48) for r in built.rows)

    assert [(row.key, row.packets) for row in report.top_sources] == ranked(by_source, 5)
    assert [(row.key, row.packets) for row in report.top_48s] == ranked(by_48, 5)
    every_48 = build_report(built.root, top_n=100).top_48s
    assert HOSTILE_48 in {row.key for row in every_48}
    for row in every_48:  # sources: exact over the selection, neither a sum nor the largest of its days
        members = [r for r in built.rows if prefix(r["src"], 48) == row.key]
        assert row.sources == len({r["src"] for r in members}), row.key
        assert row.bytes == sum(r["wire_length"] for r in members)
        assert row.probes == len({r["probe_id"] for r in members})


def test_scanner_candidates_and_the_criteria_they_met(built: Built, report: Report) -> None:
    expected = scanner_oracle(built.rows)

    assert {SCANNER_SWEEP, SCANNER_64S} <= set(expected)  # the capture's two scanners are found
    assert report.scanner_count == len(expected)
    assert {
        row.src: (row.met_destinations, row.met_destination_64s, row.destinations) for row in report.scanners
    } == expected
    assert report.scanner_criteria == (30, 10)


def test_address_classes_protocols_and_dns(built: Built, report: Report) -> None:
    scope_of = {r["src"]: r["src_scope"] for r in built.rows}
    assert {s.name: s.sources for s in report.scopes} == Counter(scope_of.values())

    mix = report.protocol_mix
    assert mix is not None
    protocols = Counter(PROTOCOL_NAMES[r["protocol"]] for r in built.rows)
    largest = ranked(protocols, PROTOCOLS_DRAWN)
    other = len(built.rows) - sum(n for _, n in largest)
    assert [(name, sum(values)) for name, values in mix.series] == [*largest, ("other", other)]
    assert other > 0
    assert mix.bucket_s % SETTINGS.series_interval_s == 0 and len(mix.starts) <= SERIES_POINTS_MAX
    assert all(len(values) == len(mix.starts) for _, values in mix.series)

    queries = Counter(
        r["dns_qname"] for r in built.rows if r["dns_qname"] is not None and not r["dns_is_response"]
    )
    names = {row.qname: row.queries for row in report.dns_names}
    assert names[HOSTILE_NAME] == HOSTILE_QUERIES * len(CAPTURES)
    assert report.dns_names[0].queries == max(queries.values())
    assert names.items() <= queries.items()
    assert {row.qtype: row.queries for row in report.dns_types}["AAAA"] == sum(
        r["dns_qtype"] == 28 and not r["dns_is_response"] for r in built.rows
    )


def test_a_selection_counts_only_its_partitions(built: Built) -> None:
    first_day = build_report(built.root, dates=(DAY_1, DAY_1), top_n=5)
    only_b = build_report(built.root, probe_ids=["p-b"], top_n=5)
    from_day_2 = build_report(built.root, dates=(DAY_2, None), top_n=5)

    assert first_day.summary.packets == sum(r["date"] == DAY_1 for r in built.rows)
    assert first_day.summary.dates == (DAY_1,)
    assert [p.probe_id for p in only_b.summary.probes] == ["p-b"]
    assert only_b.summary.packets == sum(r["probe_id"] == "p-b" for r in built.rows)
    assert from_day_2.summary.packets == sum(r["date"] == DAY_2 for r in built.rows)


# -- the page ---------------------------------------------------------------------------------------------


class Page(HTMLParser):
    """The tags, attributes and text of a page, as a browser's tokenizer splits them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter[str] = Counter()
        self.attributes: set[str] = set()
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attributes.update(name for name, _ in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_page_has_its_plots_and_fetches_nothing(html: str) -> None:
    page = Page(html)

    assert page.tags["svg"] >= 6  # top sources, top /48s, protocol mix, scope, IID class, DNS types
    assert page.tags["polygon"] >= 3  # one stacked area per protocol
    assert page.tags["rect"] >= 10
    assert not {"script", "img", "link", "iframe", "object"} & set(page.tags)
    assert not {"src", "href", "srcset", "action"} & page.attributes
    assert "default-src 'none'" in html
    for section in ("summary", "top-sources", "top-48s", "protocols", "address-classes", "scanners", "dns"):
        assert f'<section id="{section}">' in html


def test_hostile_labels_and_dns_names_are_text_not_markup(html: str) -> None:
    page = Page(html)
    text = "".join(page.text)

    assert HOSTILE_LABEL in text and HOSTILE_NAME in text  # shown, as text
    assert "<script" not in html and "<img" not in html  # never as markup
    assert "&lt;img src=x onerror=window.pwned=2&gt;.example" in html


@pytest.mark.slow
def test_the_page_in_a_browser_runs_nothing_and_requests_nothing(tmp_path: Path, html: str) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("Debian's chromium is not installed (./scripts/setup installs it)")
    path = tmp_path / "report.html"
    write_html(html, path)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(path.as_uri())
            assert requests == [path.as_uri()]
            assert page.evaluate("typeof window.pwned") == "undefined"
            charts = page.locator("svg.chart")
            assert charts.count() >= 6
            for i in range(charts.count()):
                box = charts.nth(i).bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 20
            assert HOSTILE_LABEL in page.inner_text("#summary")
        finally:
            browser.close()


def test_partitions_without_derived_datasets_are_named_in_a_note(tmp_path: Path) -> None:
    data = capture(5, MIDNIGHT_NS, "p-c")
    write_packets(
        enriched(data, "p-c", 1, {}), tmp_path, sha256_hex=hashlib.sha256(data).hexdigest(), sequence=1
    )

    report = build_report(tmp_path, top_n=5)
    page = render_html(report)

    assert report.summary.packets > 0 and report.summary.sources_128 is None
    assert report.top_sources == () and report.protocol_mix is None
    assert report.scanner_count is None and report.dns_messages is None
    assert report.notes == (
        "sources_128, sources_64, sources_48, protocol_series, scanners, dns_queries are not built for 1 of 1"
        " partitions (e.g. date=2023-11-15/probe_id=p-c): their packets are missing from those figures;"
        " `survey6-aggregate run` builds them.",
    )
    assert "are not built for 1 of 1 partitions" in page and "No source rollup" in page


def test_chart_geometry_stays_in_its_box_and_ticks_fall_on_whole_hours() -> None:
    start = dt.datetime(2023, 11, 14, 21, 0, tzinfo=dt.UTC)
    starts = [start + dt.timedelta(minutes=10 * i) for i in range(36)]  # 6 hours
    series = [("TCP", [i % 7 for i in range(36)]), ("UDP", [40] * 36), ("other", [0] * 35 + [3])]
    chart = step_area(starts, 600, series)

    right, bottom = chart.left + chart.plot_width, chart.top + chart.plot_height
    for area in chart.areas:
        for point in area.points.split():
            x, y = map(float, point.split(","))
            assert chart.left - 0.05 <= x <= right + 0.05 and chart.top - 0.05 <= y <= bottom + 0.05
    # The highest stack is 46 packets: six ticks of 10 cover it.
    assert [t.text for t in chart.y_ticks] == ["0", "10", "20", "30", "40", "50"]
    assert [(t.text, t.subtext) for t in chart.x_ticks] == [
        ("21:00", "2023-11-14"), ("22:00", ""), ("23:00", ""), ("00:00", "2023-11-15"),
        ("01:00", ""), ("02:00", ""), ("03:00", ""),
    ]  # fmt: skip
    assert chart.x_ticks[0].position == chart.left and chart.x_ticks[-1].position == right

    bars = bar_chart([("a", 50, "50"), ("b", 25, "25"), ("c", 0, "0")], width=400)
    assert bars.bars[0].length == 2 * bars.bars[1].length > 0 and bars.bars[2].length == 0
    assert bars.label_width + bars.bars[0].length < bars.width


# -- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"dates": ("2023-11-31", None)}, "'2023-11-31' is not a date: use YYYY-MM-DD"),
        ({"dates": (DAY_2, DAY_1)}, f"the date range {DAY_2} to {DAY_1} ends before it starts"),
        ({"top_n": 0}, "top 0: the tables take 1 to 1000 rows"),
        ({"dates": ("2024-01-01", None)}, "no data from 2024-01-01 to the last date in "),
        ({"probe_ids": ["p-zz"]}, "no data of probe p-zz in "),
    ],
)
def test_bad_arguments_and_empty_selections_get_a_clear_error(
    built: Built, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(AggregatorError) as caught:
        build_report(built.root, **arguments)
    assert message in str(caught.value)
    if "no data" in message:  # the error says what there is instead
        assert str(caught.value).endswith(f"it holds {DAY_1} to {DAY_2} of probes p-a, p-b")


def test_an_output_dir_without_datasets_is_refused(tmp_path: Path) -> None:
    (tmp_path / "packets" / "notes").mkdir(parents=True)
    with pytest.raises(AggregatorError, match="^no survey6 datasets in .*: it has no packets/date="):
        build_report(tmp_path)
    with pytest.raises(AggregatorError, match="^the output directory .*missing does not exist$"):
        build_report(tmp_path / "missing")


def test_a_page_that_cannot_be_written_says_why(tmp_path: Path) -> None:
    with pytest.raises(AggregatorError, match="^cannot write .*report.html: No such file") as caught:
        write_html("<p>x</p>", tmp_path / "missing" / "report.html")
    assert isinstance(caught.value.__cause__, OSError)


# -- the command ----------------------------------------------------------------------------------------


def aggregate(argv: list[str | Path], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``survey6-aggregate ARGV`` through the entry point's error handling, with the command registered
    as ``cli.py`` registers it."""
    group = click.Group(PROG)
    group.add_command(report_command)
    status = run_group(group, PROG, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_the_command_writes_the_page(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "page.html"
    argv: list[str | Path] = ["report", "--output", built.root, "--html", target, "--top", "3"]
    status, out, err = aggregate([*argv, "--probe-id", "p-b", "--date-from", DAY_2], capsys)

    assert (status, err) == (0, "")
    of_b = [r for r in built.rows if r["probe_id"] == "p-b"]
    scanners = len(scanner_oracle(of_b))
    assert out.startswith(f"wrote {target} (")
    assert out.endswith(f"{len(of_b):,} packets of 1 probe, {DAY_2}, {scanners} scanner candidates\n")
    page = Page(target.read_text())
    assert page.tags["svg"] >= 6 and "p-a" not in "".join(page.text)


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--date-from", "15.11.2023"], 2, "Invalid value for '--date-from': '15.11.2023' is not a date"),
        (["--date-from", "2030-01-01"], 1, f"{PROG}: error: no data from 2030-01-01 to the last date in "),
        (["--top", "0"], 2, "Invalid value for '--top'"),
    ],
)
def test_the_command_reports_bad_input_in_one_line(
    built: Built,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    message: str,
) -> None:
    result = aggregate(["report", "--output", built.root, "--html", tmp_path / "r.html", *argv], capsys)

    assert result[0] == status
    assert message in result[2] and "Traceback" not in result[2]
    assert not (tmp_path / "r.html").exists()


def test_the_command_on_an_empty_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = aggregate(["report", "--output", tmp_path, "--html", tmp_path / "r.html"], capsys)

    assert (status, out) == (1, "")
    assert err.startswith(f"{PROG}: error: no survey6 datasets in {tmp_path}") and err.count("\n") == 1


def test_the_installed_command(built: Built, tmp_path: Path) -> None:
    from survey6.aggregator.cli import cli

    assert "report" in cli.commands
    done = subprocess.run(
        [sys.executable, "-m", "survey6.aggregator", "report", "--output", str(built.root), "--top", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert Page((tmp_path / "report.html").read_text()).tags["svg"] >= 6

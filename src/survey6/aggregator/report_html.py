"""The report page: one Jinja2 template with inline CSS and SVG charts, autoescaped throughout.

Probe labels, DNS names and the output path are text that others control; the template is the only
place anything becomes markup, and autoescaping is on for all of it (SVG labels included). The page
fetches nothing and runs no script — its Content-Security-Policy says so to the browser — so it can be
mailed or opened offline.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import jinja2

from survey6 import __version__
from survey6.aggregator import report_charts as charts

if TYPE_CHECKING:
    from survey6.aggregator.report_data import ClassShare, Report, SourceRow

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_DURATION_UNITS_S = ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second"))
PAGE_WIDTH_PX = 1084  # the content width: 1140 px less the padding
TOP_CHART_WIDTH_PX = 820
SHARE_CHART_WIDTH_PX = 520  # two share charts side by side in the page's 1084 px
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PROBES_LISTED = 4  # probe ids named in a scanner's row; the rest are counted
TABLE_TIME_FORMAT = "%Y-%m-%d %H:%M"  # seconds would widen every table for little use


def render(report: Report) -> str:
    environment = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    environment.filters.update(
        num=count, octets=octets, when=when, minute=minute, share=share, duration=duration
    )
    template = environment.from_string(TEMPLATE)
    mix = report.protocol_mix
    total = report.summary.packets or sum(row.packets for row in report.scopes)
    return template.render(
        r=report,
        s=report.summary,
        total_packets=total,
        version=__version__,
        sources_chart=_top_chart(report.top_sources, charts.PALETTE[0]),
        prefixes_chart=_top_chart(report.top_48s, charts.PALETTE[4]),
        mix_chart=None
        if mix is None
        else charts.step_area(mix.starts, mix.bucket_s, mix.series, width=PAGE_WIDTH_PX),
        mix_totals=[] if mix is None else [(name, sum(values)) for name, values in mix.series],
        mix_total=0 if mix is None else sum(sum(values) for _, values in mix.series),
        scope_chart=_share_chart(report.scopes, charts.PALETTE[2]),
        iid_chart=_share_chart(report.iid_classes, charts.PALETTE[5]),
        dns_type_chart=charts.bar_chart(
            [(row.qtype, row.queries, count(row.queries)) for row in report.dns_types[: report.top_n]],
            width=SHARE_CHART_WIDTH_PX,
            color=charts.PALETTE[1],
        ),
        color_of=charts.color_of,
        probes_listed=PROBES_LISTED,
    )


def _top_chart(rows: tuple[SourceRow, ...], color: str) -> charts.BarChart:
    return charts.bar_chart(
        [(row.key, row.packets, count(row.packets)) for row in rows], width=TOP_CHART_WIDTH_PX, color=color
    )


def _share_chart(shares: tuple[ClassShare, ...], color: str) -> charts.BarChart:
    total = sum(row.sources for row in shares)
    return charts.bar_chart(
        [(row.name, row.sources, f"{share(row.sources, total)} ({count(row.sources)})") for row in shares],
        width=SHARE_CHART_WIDTH_PX,
        color=color,
    )


# -- filters ---------------------------------------------------------------------------------------


def count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def octets(value: int) -> str:
    """Bytes in binary units, three significant digits: 45.7 KiB."""
    size = float(value)
    for unit in _BYTE_UNITS:
        if size < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{value} B" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1024
    raise AssertionError("unreachable: the last unit returns")


def when(value: dt.datetime | None, time_format: str = TIME_FORMAT) -> str:
    return "—" if value is None else value.astimezone(dt.UTC).strftime(time_format)


def minute(value: dt.datetime | None) -> str:
    return when(value, TABLE_TIME_FORMAT)


def share(part: int, whole: int) -> str:
    return "—" if whole <= 0 else f"{100 * part / whole:.1f} %"


def duration(seconds: int) -> str:
    for unit_s, name in _DURATION_UNITS_S:
        if seconds % unit_s == 0:
            n = seconds // unit_s
            return f"{n} {name}" if n == 1 else f"{n} {name}s"
    return f"{seconds} s"


TEMPLATE = """\
{%- macro bars(chart, label) -%}
{% if chart.bars %}
<svg class="chart" role="img" aria-label="{{ label }}" width="{{ chart.width }}" height="{{ chart.height }}"
     viewBox="0 0 {{ chart.width }} {{ chart.height }}" xmlns="http://www.w3.org/2000/svg">
{% for bar in chart.bars %}
  <g transform="translate(0 {{ bar.y }})">
    <title>{{ bar.label }}: {{ bar.text }}</title>
    <text class="label" x="{{ chart.label_width - 8 }}" y="{{ chart.bar_height - 4 }}"
          text-anchor="end">{{ bar.label }}</text>
    <rect x="{{ chart.label_width }}" width="{{ '%.1f' % [bar.length, 1.5]|max }}"
          height="{{ chart.bar_height }}" rx="2" fill="{{ chart.color }}"/>
    <text class="value" x="{{ '%.1f' % (chart.label_width + bar.length + 6) }}"
          y="{{ chart.bar_height - 4 }}">{{ bar.text }}</text>
  </g>
{% endfor %}
</svg>
{% endif %}
{%- endmacro -%}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="survey6 {{ version }}">
<title>survey6 report: {{ s.dates[0] }}{% if s.dates|length > 1 %} to {{ s.dates[-1] }}{% endif %}</title>
<style>
:root { --ink: #1d2733; --muted: #5f6b7a; --line: #dde3ea; --soft: #f4f6f9; --accent: #4e79a7; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1140px; margin: 0 auto; padding: 28px 28px 48px; }
header h1 { font-size: 24px; margin: 0 0 4px; }
header p { margin: 2px 0; color: var(--muted); }
h2 { font-size: 18px; margin: 36px 0 6px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 14px; margin: 18px 0 6px; color: var(--muted); text-transform: uppercase;
     letter-spacing: .04em; }
p.lead { margin: 4px 0 14px; color: var(--muted); }
.mono, td.addr { font-family: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, Consolas, monospace;
                 font-size: 12.5px; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin: 16px 0; }
.card { background: var(--soft); border-radius: 8px; padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .d { color: var(--muted); font-size: 12px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 4px; font-size: 13px;
        font-variant-numeric: tabular-nums; }
th, td { padding: 5px 6px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td.name { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px;
          overflow-wrap: anywhere; }
.probe { white-space: nowrap; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: var(--soft); }
td.n, th.n { text-align: right; white-space: nowrap; }
td.t, td.c { white-space: nowrap; }
td.t { color: var(--muted); font-size: 12px; }
tbody tr:hover { background: #fafbfc; }
.chart { display: block; margin: 12px 0 4px; overflow: visible; }
.chart text { font-size: 12px; fill: var(--ink); }
.chart text.label { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
.chart text.value, .chart .axis text { fill: var(--muted); }
.chart .grid { stroke: var(--line); stroke-width: 1; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 28px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 10px 0 0; font-size: 13px; }
.legend span.sw { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px;
                  vertical-align: -1px; }
.legend .c { color: var(--muted); }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; background: #fde8e8;
         color: #a12d2d; margin: 0 3px 2px 0; white-space: nowrap; }
.notes { background: #fff6e0; border-left: 4px solid #e0a400; padding: 8px 14px; margin: 18px 0; }
.notes p { margin: 4px 0; }
.empty { color: var(--muted); font-style: italic; }
.labels span { display: inline-block; background: var(--soft); border-radius: 4px; padding: 0 6px;
               margin: 0 4px 2px 0; font-size: 12.5px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line);
         padding-top: 10px; }
</style>
</head>
<body>
<main>
<header>
  <h1>survey6 report</h1>
  <p>Datasets in <span class="mono">{{ r.output_root }}</span></p>
  <p>Selection:
    {% if r.dates %}dates {{ r.dates[0] or "(first)" }} to {{ r.dates[1] or "(last)" }}
    {%- else %}all dates{% endif %},
    {% if r.probe_ids %}probes {{ r.probe_ids|join(", ") }}{% else %}all probes{% endif %}
    · generated {{ r.generated_at|when }} UTC by survey6 {{ version }}</p>
  {% if s.first_seen %}<p>Packets from {{ s.first_seen|when }} to {{ s.last_seen|when }} UTC</p>{% endif %}
</header>
{% if r.notes %}
<section class="notes">{% for note in r.notes %}<p>{{ note }}</p>{% endfor %}</section>
{% endif %}

<section id="summary">
<h2>Summary</h2>
<div class="cards">
  <div class="card"><div class="k">Probes</div><div class="v">{{ s.probes|length|num }}</div>
    <div class="d">{{ s.partitions|num }} probe-day{{ "s" if s.partitions != 1 }}</div></div>
  <div class="card"><div class="k">Dates (UTC)</div><div class="v">{{ s.dates|length|num }}</div>
    <div class="d">{{ s.dates[0] }}{% if s.dates|length > 1 %} to {{ s.dates[-1] }}{% endif %}</div></div>
  <div class="card"><div class="k">Packets</div><div class="v">{{ s.packets|num }}</div>
    <div class="d">{{ s.bytes|octets }} on the wire</div></div>
  <div class="card"><div class="k">Capture files</div><div class="v">{{ s.files|num }}</div>
    <div class="d">captures ingested (pcap, pcapng)</div></div>
  <div class="card"><div class="k">Sources /128</div><div class="v">{{ s.sources_128|num }}</div>
    <div class="d">distinct source addresses</div></div>
  <div class="card"><div class="k">Sources /64</div><div class="v">{{ s.sources_64|num }}</div>
    <div class="d">distinct source /64 prefixes</div></div>
  <div class="card"><div class="k">Sources /48</div><div class="v">{{ s.sources_48|num }}</div>
    <div class="d">distinct source /48 prefixes</div></div>
  <div class="card"><div class="k">Scanner candidates</div><div class="v">{{ r.scanner_count|num }}</div>
    <div class="d">{{ r.dns_messages|num }} DNS messages</div></div>
</div>
{% if s.probes %}
<div class="scroll"><table>
  <thead><tr><th>probe</th><th>labels</th><th class="n">packets</th><th class="n">bytes</th>
    <th class="n">files</th><th class="n">days</th><th>dates</th></tr></thead>
  <tbody>
  {% for p in s.probes %}
    <tr><td class="mono">{{ p.probe_id }}</td>
      <td class="labels">{% for label in p.labels %}<span>{{ label }}</span>{% else %}—{% endfor %}</td>
      <td class="n">{{ p.packets|num }}</td><td class="n">{{ p.bytes|octets }}</td>
      <td class="n">{{ p.files|num }}</td><td class="n">{{ p.days }}</td>
      <td class="t">{{ p.first_date }}{% if p.last_date != p.first_date %} to {{ p.last_date }}{% endif %}
      </td></tr>
  {% endfor %}
  </tbody>
</table></div>
{% endif %}
</section>

{% macro source_table(rows, prefixes) %}
<div class="scroll"><table>
  <thead><tr><th>{{ "prefix" if prefixes else "source" }}</th><th>scope</th>
    <th>IID class</th>{% if prefixes %}<th class="n">sources</th>{% endif %}
    <th class="n">packets</th><th class="n">share</th><th class="n">bytes</th>
    <th class="n" title="the most destinations it reached at one probe on one day">destinations</th>
    <th class="n">probes</th><th>first seen</th><th>last seen</th></tr></thead>
  <tbody>
  {% for row in rows %}
    <tr><td class="addr">{{ row.key }}</td><td class="c">{{ row.scope }}</td>
      <td class="c">{{ row.iid_class or "—" }}</td>
      {% if prefixes %}<td class="n">{{ row.sources|num }}</td>{% endif %}
      <td class="n">{{ row.packets|num }}</td><td class="n">{{ row.packets|share(total_packets) }}</td>
      <td class="n">{{ row.bytes|octets }}</td><td class="n">{{ row.destinations|num }}</td>
      <td class="n">{{ row.probes }}</td><td class="t">{{ row.first_seen|minute }}</td>
      <td class="t">{{ row.last_seen|minute }}</td></tr>
  {% endfor %}
  </tbody>
</table></div>
{% endmacro %}

<section id="top-sources">
<h2>Top sources</h2>
{% if r.top_sources %}
<p class="lead">The {{ r.top_sources|length }} source addresses that sent the most packets.</p>
{{ bars(sources_chart, "packets per source address") }}
{{ source_table(r.top_sources, false) }}
{% else %}<p class="empty">No source rollup (sources_128) in this selection.</p>{% endif %}
</section>

<section id="top-48s">
<h2>Top source /48s</h2>
{% if r.top_48s %}
<p class="lead">The {{ r.top_48s|length }} source /48 prefixes that sent the most packets;
  sources counts the distinct addresses of each over the whole selection.</p>
{{ bars(prefixes_chart, "packets per source /48") }}
{{ source_table(r.top_48s, true) }}
{% else %}<p class="empty">No /48 rollup (sources_48) in this selection.</p>{% endif %}
</section>

<section id="protocols">
<h2>Protocol mix over time</h2>
{% if mix_chart %}
{% set mix = r.protocol_mix %}
<p class="lead">Packets per {{ mix.bucket_s|duration }}, stacked by upper-layer protocol (UTC).
  {% if mix.untimed_packets %}{{ mix.untimed_packets|num }} packets without a timestamp are not drawn.
  {%- endif %}</p>
<div class="legend">
{% for name, n in mix_totals %}
  <span><span class="sw" style="background: {{ color_of(name, loop.index0) }}"></span>{{ name }}
    <span class="c">{{ n|num }} · {{ n|share(mix_total) }}</span></span>
{% endfor %}
</div>
{% set c = mix_chart %}
<svg class="chart" role="img" aria-label="packets per interval by protocol" width="{{ c.width }}"
     height="{{ c.height }}" viewBox="0 0 {{ c.width }} {{ c.height }}" xmlns="http://www.w3.org/2000/svg">
  <g class="axis">
  {% for t in c.y_ticks %}
    <line class="grid" x1="{{ c.left }}" x2="{{ c.left + c.plot_width }}" y1="{{ '%.1f' % t.position }}"
          y2="{{ '%.1f' % t.position }}"/>
    <text x="{{ c.left - 8 }}" y="{{ '%.1f' % (t.position + 4) }}" text-anchor="end">{{ t.text }}</text>
  {% endfor %}
  </g>
  {% for area in c.areas %}
  <polygon points="{{ area.points }}" fill="{{ area.color }}" fill-opacity="0.9">
    <title>{{ area.label }}</title></polygon>
  {% endfor %}
  <g class="axis">
    <line x1="{{ c.left }}" x2="{{ c.left + c.plot_width }}" y1="{{ c.top + c.plot_height }}"
          y2="{{ c.top + c.plot_height }}" stroke="#8a96a3"/>
  {% for t in c.x_ticks %}
    <line x1="{{ '%.1f' % t.position }}" x2="{{ '%.1f' % t.position }}" y1="{{ c.top + c.plot_height }}"
          y2="{{ c.top + c.plot_height + 5 }}" stroke="#8a96a3"/>
    <text x="{{ '%.1f' % t.position }}" y="{{ c.top + c.plot_height + 18 }}"
          text-anchor="middle">{{ t.text }}</text>
    {% if t.subtext %}<text x="{{ '%.1f' % t.position }}" y="{{ c.top + c.plot_height + 32 }}"
      text-anchor="middle">{{ t.subtext }}</text>{% endif %}
  {% endfor %}
  </g>
</svg>
{% else %}<p class="empty">No protocol series (protocol_series) in this selection.</p>{% endif %}
</section>

<section id="address-classes">
<h2>Address classes of the sources</h2>
{% if r.scopes %}
<p class="lead">Share of the distinct source addresses by scope and by interface-ID class
  (as ipv6toolkit's addr6 classifies them).</p>
<div class="pair">
  <div><h3>Scope</h3>{{ bars(scope_chart, "sources by scope") }}</div>
  <div><h3>Interface-ID class</h3>{{ bars(iid_chart, "sources by interface-ID class") }}</div>
</div>
{% else %}<p class="empty">No source rollup (sources_128) in this selection.</p>{% endif %}
</section>

<section id="scanners">
<h2>Scanner candidates</h2>
<p class="lead">Sources that, at one probe on one day, reached
  {% if r.scanner_criteria %}at least {{ r.scanner_criteria[0]|num }} destination addresses or at least
  {{ r.scanner_criteria[1]|num }} destination /64s (the current settings; the badges say which criterion
  each met when its datasets were built){% else %}the destination or destination-/64 threshold of the
  settings the datasets were built with (the badges say which){% endif %}.
  Destination counts are the largest at one probe on one day.</p>
{% if r.scanners %}
<div class="scroll"><table>
  <thead><tr><th>source</th><th>scope</th><th>IID class</th><th>met</th><th class="n">destinations</th>
    <th class="n">dest. /64s</th><th class="n">dest. ports</th><th class="n">packets</th><th>probes</th>
    <th class="n">days</th><th>first and last seen</th></tr></thead>
  <tbody>
  {% for row in r.scanners %}
    <tr><td class="addr">{{ row.src }}</td><td class="c">{{ row.scope }}</td>
      <td class="c">{{ row.iid_class or "—" }}</td>
      <td>{% if row.met_destinations %}<span class="badge">destinations</span>{% endif %}
        {% if row.met_destination_64s %}<span class="badge">/64s</span>{% endif %}</td>
      <td class="n">{{ row.destinations|num }}</td><td class="n">{{ row.destination_64s|num }}</td>
      <td class="n">{{ row.destination_ports|num }}</td><td class="n">{{ row.packets|num }}</td>
      <td class="mono">{% for probe in row.probes[:probes_listed] %}<span class="probe">{{ probe }}</span>
        {% endfor %}{% if row.probes|length > probes_listed %}and {{ row.probes|length - probes_listed }} more
        {%- endif %}</td>
      <td class="n">{{ row.days }}</td>
      <td class="t">{{ row.first_seen|minute }}<br>{{ row.last_seen|minute }}</td></tr>
  {% endfor %}
  </tbody>
</table></div>
{% if r.scanner_count and r.scanner_count > r.scanners|length %}<p class="lead">{{ r.scanners|length }} of
  {{ r.scanner_count|num }} candidates shown.</p>{% endif %}
{% else %}<p class="empty">No source met a scanner criterion in this selection.</p>{% endif %}
</section>

<section id="dns">
<h2>DNS</h2>
{% if r.dns_names %}
<p class="lead">{{ r.dns_messages|num }} DNS messages (UDP and TCP port 53, mDNS);
  the first question of each.</p>
<div class="pair">
<div>
<h3>Top query names</h3>
<div class="scroll"><table>
  <thead><tr><th>name</th><th class="n">queries</th><th class="n">responses</th><th class="n">NXDOMAIN</th>
    <th class="n">clients</th><th>types</th></tr></thead>
  <tbody>
  {% for row in r.dns_names %}
    <tr><td class="name">{{ row.qname or "." }}</td><td class="n">{{ row.queries|num }}</td>
      <td class="n">{{ row.responses|num }}</td><td class="n">{{ row.nxdomain|num }}</td>
      <td class="n">{{ row.clients|num }}</td><td>{{ row.qtypes|join(", ") }}</td></tr>
  {% endfor %}
  </tbody>
</table></div>
</div>
<div><h3>Query types</h3>{{ bars(dns_type_chart, "DNS queries by type") }}</div>
</div>
{% else %}<p class="empty">No DNS messages in this selection.</p>{% endif %}
</section>

<footer>
  Made by <span class="mono">survey6-aggregate report</span> from the Parquet datasets (packets,
  sources_128, sources_64, sources_48, protocol_series, scanners, dns_queries). Addresses are in
  RFC 5952 text; times are UTC.
  Self-contained: no scripts, nothing fetched.
</footer>
</main>
</body>
</html>
"""

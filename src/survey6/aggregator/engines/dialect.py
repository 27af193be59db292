"""The SQL that DuckDB and Spark share, and the few spellings where they differ.

The derived datasets (``datasets``) are built from the helpers here, so each is written once. Where
the dialects part, ``Dialect`` holds the difference as one small template; nothing else may branch
on the engine. Two kinds of difference are handled without a template, in one place each:

- nullability: Spark writes a column it can prove non-null as Parquet REQUIRED, DuckDB writes every
  computed column OPTIONAL. Counts are the only such columns here; ``count`` makes them nullable.
- null order: DuckDB sorts NULLs last by default and Spark first; ``select`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass

from survey6.aggregator.errors import AggregatorError

NS_PER_US = 1_000

# An output column: its name, the SQL type it is cast to (None: the expression is typed already, as a
# dialect's timestamp is) and its expression over the query's columns.
Columns = list[tuple[str, str | None, str]]
# Address texts to add: output name → (binary address column, prefix length 128, 64 or 48).
Texts = dict[str, tuple[str, int]]

_PREFIX_HEX_DIGITS = {128: 32, 64: 16, 48: 12}


@dataclass(frozen=True)
class Dialect:
    """The spellings where DuckDB SQL and Spark SQL differ."""

    name: str
    group_reference: str  # a back-reference to regex group {n} in regexp_replace's replacement
    integer_division: str  # {a} divided by {b} as an integer (always an exact multiple here)
    utc_timestamp: str  # {micros} since the epoch as a UTC timestamp (Parquet isAdjustedToUTC)

    def group(self, n: int) -> str:
        return self.group_reference.format(n=n)

    def divide(self, a: str, b: str) -> str:
        return self.integer_division.format(a=a, b=b)

    def timestamp(self, micros: str) -> str:
        return self.utc_timestamp.format(micros=micros)


# The DuckDB engine sets its session time zone to UTC, which the cast to TIMESTAMPTZ relies on.
DUCKDB = Dialect("duckdb", "\\{n}", "({a} // {b})", "CAST(make_timestamp({micros}) AS TIMESTAMPTZ)")
# Spark string literals treat "\" as an escape, and Java regexes refer to groups as $n.
SPARK = Dialect("spark", "${n}", "({a} div {b})", "timestamp_micros({micros})")


def count(what: str = "*") -> str:
    # NULLIF with an impossible -1 changes no value; it only stops Spark from declaring the count
    # NOT NULL, so that both engines write the column OPTIONAL.
    return f"NULLIF(count({what}), -1)"


def count_distinct(column: str) -> str:
    return count(f"DISTINCT {column}")


def micros(d: Dialect, ns: str, unit_ns: int = NS_PER_US) -> str:
    """``ns`` rounded down to a multiple of ``unit_ns`` (a whole number of µs), in µs.

    Rounded with ``%`` alone, which both engines compute alike, so negative times agree too; the
    division is then exact.
    """
    floor = f"({ns} - ((({ns}) % {unit_ns}) + {unit_ns}) % {unit_ns})"
    return d.divide(floor, str(NS_PER_US))


def time(d: Dialect, ns: str) -> str:
    """A ns timestamp as a UTC timestamp; Spark holds µs, so both engines cut the ns off."""
    return d.timestamp(micros(d, ns))


def interval_ns(seconds: float, setting: str) -> int:
    """An interval setting as whole µs, in ns.

    Raises:
        AggregatorError: the interval is shorter than 1 µs.
    """
    whole_us = round(seconds * 1_000_000)
    if whole_us < 1:
        raise AggregatorError(f"{setting} must be at least 1 µs, not {seconds} s")
    return whole_us * NS_PER_US


def with_address_text(d: Dialect, query: str, texts: Texts) -> str:
    """``query`` with a column ``<name>__t`` per entry of ``texts``: the RFC 5952 text of the binary
    address column cut to the prefix length, as Python's ``ipaddress`` writes it, "/64" or "/48"
    appended to a prefix.

    Each step is a layer of its own so no expression repeats a long one: hex digits, hextets without
    leading zeros between colons, the first longest run of zero hextets replaced by "::", the outer
    colons trimmed. Callers format after aggregating, which costs one string per group.
    """
    for step in ("h", "s", "r", "t"):
        if not texts:
            break
        added = ", ".join(
            f"{_text_step(d, step, name, column, bits)} AS {name}__{step}"
            for name, (column, bits) in texts.items()
        )
        query = f"SELECT *, {added} FROM ({query}) AS text_{step}"
    return query


def select(d: Dialect, query: str, columns: Columns, texts: Texts) -> str:
    """The outer SELECT of a dataset: address texts, every column cast to its type, rows in order."""
    listing = ", ".join(
        f"{expression} AS {name}" if kind is None else f"CAST({expression} AS {kind}) AS {name}"
        for name, kind, expression in columns
    )
    # The same order in both engines makes the same rows in the same sequence in the file.
    order = ", ".join(f"{name} ASC NULLS FIRST" for name, _, _ in columns)
    return f"SELECT {listing} FROM ({with_address_text(d, query, texts)}) AS final ORDER BY {order}"


def _text_step(d: Dialect, step: str, name: str, column: str, bits: int) -> str:
    if step == "h":
        return _hex(column, bits)
    if step == "s":
        return _hextets(f"{name}__h")
    if step == "r":
        return _compress_zeros(d, f"{name}__s")
    return _trim_colons(f"{name}__r") + (f" || '/{bits}'" if bits < 128 else "")


def _hex(column: str, bits: int) -> str:
    digits = _PREFIX_HEX_DIGITS[bits]
    host = "0" * (32 - digits)
    text = f"lower(hex({column}))"
    return text if not host else f"substr({text}, 1, {digits}) || '{host}'"


def _hextets(hex_digits: str) -> str:
    # ":2001:db8:0:0:0:0:0:1:" — the colons around every hextet make a zero hextet exactly ":0:".
    hextets = [f"regexp_replace(substr({hex_digits}, {4 * i + 1}, 4), '^0{{1,3}}', '')" for i in range(8)]
    return "':' || " + " || ':' || ".join(hextets) + " || ':'"


def _compress_zeros(d: Dialect, s: str) -> str:
    # Longest runs first; the lazy prefix makes the replacement hit the first run of that length
    # (RFC 5952 section 4.2.3), and a single zero hextet is never compressed.
    cases = " ".join(
        f"WHEN {s} LIKE '%{':0' * k}:%' "
        f"THEN regexp_replace({s}, '^(.*?)(:0){{{k}}}:(.*)$', '{d.group(1)}::{d.group(3)}')"
        for k in range(8, 1, -1)
    )
    return f"CASE {cases} ELSE {s} END"


def _trim_colons(r: str) -> str:
    lead = f"CASE WHEN {r} LIKE '::%' THEN 1 ELSE 2 END"  # a leading "::" keeps its colons
    trail = f"CASE WHEN {r} LIKE '%::' THEN 0 ELSE 1 END"
    return f"substr({r}, {lead}, length({r}) + 1 - ({lead}) - ({trail}))"

"""The aggregator: parses landed pcaps and builds research-ready IPv6 Parquet datasets."""

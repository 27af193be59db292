"""Generated wire API v1 modules; regenerate with ./scripts/gen-proto."""

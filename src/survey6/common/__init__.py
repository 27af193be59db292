"""What every side of survey6 shares: settings loading, logging setup, units and the error base."""

"""The probe: captures IPv6 with libpcap into a local spool, reports health, delivers when idle."""

//! Per-attempt timeout, capped by the SLA deadline, for tower services

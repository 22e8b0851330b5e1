//! End-to-end SLA deadline layer for tower services

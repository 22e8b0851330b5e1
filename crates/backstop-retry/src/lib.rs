//! Deadline-aware retries with a budget for tower services

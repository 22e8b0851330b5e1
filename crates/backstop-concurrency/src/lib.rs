//! Concurrency limit for tower services: shared across clones, FIFO, permit held until the body ends

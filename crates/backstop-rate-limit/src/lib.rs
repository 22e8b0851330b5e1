//! GCRA rate limiting for tower services: shared, weighted, keyed, waits within the admission deadline

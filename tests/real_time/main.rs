//! Integration tests over real sockets, on real time.

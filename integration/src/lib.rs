//! Shared helpers for Berth end-to-end tests and benchmarks: bundle building, binary lookup.

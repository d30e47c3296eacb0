//! Shared helpers for the process-level integration tests.

//! C API tests (filled in by the C test work).

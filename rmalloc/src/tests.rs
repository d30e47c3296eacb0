//! In-process tests of the whole allocator.

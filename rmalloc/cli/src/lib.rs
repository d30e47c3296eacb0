//! The library half of the `kal` tool: what other tools of the workspace
//! share with it (the benchmark runner's `make demo` draws its RSS chart
//! with [`plot`]).
pub mod plot;

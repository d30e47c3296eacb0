//! Real programs under LD_PRELOAD (filled in by the program test work).

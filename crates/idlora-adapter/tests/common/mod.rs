//! Helpers shared by the tests and the example.

pub mod base;

//! Holds no code: the benchmarks are the `[[bench]]` targets beside this file.

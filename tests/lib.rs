//! graft's integration tests live in `integration/`, built as one test binary:
//! `cargo test -p graft-tests` (or the whole suite with `cargo test --workspace`).

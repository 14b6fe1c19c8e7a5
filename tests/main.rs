//! The end-to-end tests, one module per area, in one test binary: `tests/common` and the
//! heavy client libraries are compiled and linked once, not once per area. Every test talks
//! to real servers on loopback (`scripts/services.sh`). Run one area with a filter:
//! `cargo test --features crash-points --test e2e switch::`.

mod common;

mod admin;
mod apply;
mod auth;
mod bad_input;
mod chaos;
mod dead_letters;
mod demo_targets;
mod fanout;
mod fidelity;
mod gaps;
mod lost_slot;
mod new_tables;
mod one_process;
mod partitions;
mod real_databases;
mod replication;
mod schema_changes;
mod sequences;
mod split_copy;
mod switch;
mod target_crash;
mod tls;
mod transforms;
mod truncate;
mod verify;

//! The `cutover` runtime: the pipeline file, the engine's stages, the live status, the
//! consistency checker and the switch of traffic. The binary (`src/main.rs`) is the command line over this library.

/// `println!` through [`cutover_core::secrets::scrub`]: what cutover prints never shows a secret
/// from the pipeline file.
#[macro_export]
macro_rules! say {
    () => { println!() };
    ($($arg:tt)*) => { println!("{}", ::cutover_core::secrets::scrub(&format!($($arg)*))) };
}

/// `print!` through [`cutover_core::secrets::scrub`].
#[macro_export]
macro_rules! say_part {
    ($($arg:tt)*) => { print!("{}", ::cutover_core::secrets::scrub(&format!($($arg)*))) };
}

/// `eprintln!` through [`cutover_core::secrets::scrub`].
#[macro_export]
macro_rules! say_err {
    () => { eprintln!() };
    ($($arg:tt)*) => { eprintln!("{}", ::cutover_core::secrets::scrub(&format!($($arg)*))) };
}

pub mod admin;
pub mod apply;
pub mod check;
pub mod config;
pub mod connect;
pub mod live;
pub mod lock;
pub mod pipeline;
pub mod queue;
pub mod rate;
pub mod report;
pub mod service;
pub mod state;
pub mod status;
pub mod switch;
pub mod targets;
pub mod verify;

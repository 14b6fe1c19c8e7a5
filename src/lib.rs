//! The `cutover` runtime: the pipeline file, the engine's stages, the live status, the
//! consistency checker and the switch of traffic. The binary (`src/main.rs`) is the command line over this library.

pub mod config;
pub mod pipeline;
pub mod queue;
pub mod rate;
pub mod state_file;
pub mod status;
pub mod switch;
pub mod targets;
pub mod verify;

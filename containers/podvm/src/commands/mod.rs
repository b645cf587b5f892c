//! One file per subcommand; main.rs parses and dispatches.

pub mod generator;
pub mod provision;

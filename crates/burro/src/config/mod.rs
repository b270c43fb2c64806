//! Configuration: the `burro.toml` file and its defaults.

mod duration;
mod file;

pub use duration::{format_duration, parse_duration, serde_duration, serde_duration_option};
pub use file::*;

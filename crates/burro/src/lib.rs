//! burro: a job server that runs external jobs in any language, streams
//! their progress over Server-Sent Events and stores every state in SQLite.
//!
//! Embed it with [`AppServer`], or run the `burro` binary.

pub mod clock;
pub mod config;
pub mod events;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod server;
pub mod sse;
pub mod store;
pub mod supervisor;

pub use config::Config;
pub use server::{AppServer, AppServerBuilder, Core, RunningServer, ServerError};

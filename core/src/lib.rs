//! hookq's domain: configuration, the inbound event model, signature checks,
//! repositories and the comment use case. Knows nothing of HTTP or of the job queue.

pub mod admin;
pub mod config;
pub mod db;
pub mod delivery;
pub mod demo;
pub mod devdb;
pub mod directory;
pub mod error;
pub mod events;
pub mod llm;
pub mod logs;
pub mod model;
pub mod reply;
pub mod rules;
pub mod signature;
pub mod stats;
pub mod usecase;

pub use error::{Error, FailureKind, Result};

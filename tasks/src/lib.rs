//! Job types, the queue engine (its jobs run as apalis workers), the worker runtime and its
//! process supervisor. Depends on `hookq-core`; knows nothing of HTTP.

pub mod delivery;
pub mod error;
pub mod group;
pub mod ingest;
pub mod jobs;
pub mod logstore;
pub mod queue;
pub mod retention;
pub mod supervisor;
pub mod worker;

pub use error::Error;

//! Everything that runs jobs: the queue engine, the webhook pipeline's job handlers, the
//! intake writer that stores webhooks with their jobs, outbound HTTP, operator actions and
//! the worker process supervisor. Depends on `hookq-core`; serves no HTTP.
//!
//! | room | holds |
//! |---|---|
//! | [`queue`] | the Postgres job queue (River's shape; apalis at one edge) |
//! | [`intake`] | group-committed storing of webhooks, each log with its job |
//! | [`pipeline`] | the worker process: `process_webhook` (the comment use case) and `deliver_reply`, the reply outbox, the grouped log writers |
//! | [`outbound`] | every outbound HTTP request: reply delivery, the SSRF guard, the LLM |
//! | [`ops`] | operator actions and housekeeping: retry, retention |
//! | [`replay`] | shadow replay: the comment use case over stored events, delivering nothing |
//! | [`batch`] | the group-commit primitive intake and the pipeline share |
//! | [`jobs`], [`error`], [`supervisor`] | the pipeline's job types; this crate's error; the worker process supervisor |
//! | [`telemetry`] | one trace per event: the trace context into the API, across the queue (the log's correlation id) and out on every request |
//! | [`worker_metrics`] | what worker processes measure, handed to the supervisor and served as one exposition |

pub mod batch;
pub mod error;
pub mod intake;
pub mod jobs;
pub mod ops;
pub mod outbound;
pub mod pipeline;
pub mod queue;
pub mod replay;
pub mod supervisor;
pub mod telemetry;
pub mod worker_metrics;

pub use error::Error;

//! `hookq-tasks` tested on its own, in one test binary, against real PostgreSQL (a fresh
//! database per test): the queue engine with its own job types (`queue_*`, as River's
//! driver tests), the queue folder's import graph (`queue_layout`), the log state
//! machine's every transition (`log_transitions`), the failure classification
//! (`db_failures`), and the grouped writers of intake and the pipeline.

// Test code is not a public API: the workspace's `missing_docs` lint does not apply.
#![allow(missing_docs)]

mod db_failures;
mod directory_cache;
mod grouped_starts;
mod ingest_batch;
mod log_partitions;
mod log_transitions;
mod queue_basic;
mod queue_groups;
mod queue_kill;
mod queue_layout;
mod queue_outage;

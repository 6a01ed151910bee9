//! hookq from the outside, in one test binary (one link, one `common` harness compiled
//! once): the real API on `127.0.0.1:0`, real PostgreSQL (a fresh database per test,
//! dropped when the test passes), real worker processes, and wiremock peers on loopback.
//!
//! | module | what it proves |
//! |---|---|
//! | `pipeline` | webhook → log + job → worker → outcome, idempotency, signatures, the OpenAPI drift check |
//! | `events_inbound` | every real payload shape in `tests/fixtures/` ends in the contract's outcome |
//! | `delivery`, `delivery_kill` | callback and Graph delivery, retries, limits, at-most-once under a worker kill |
//! | `admin`, `dashboard`, `metrics` | the operator surface: admin API, live page, Prometheus exposition, JSON logs |
//! | `hostile`, `processes` | bad input answered 4xx losing nothing; the `hookq` commands as processes |
//! | `pgbouncer` | the pipeline and its statements through PgBouncer 1.18 in transaction mode (`HOOKQ_WAKEUP=poll`) |
//! | `service` | running as a service: the workers' metrics, alerts and auto-disable, the files of `deploy/` |
//! | `chaos` | fault tests (`#[ignore]`, one at a time: `scripts/chaos`) |

// Test code is not a public API: the workspace's `missing_docs` lint does not apply.
#![allow(missing_docs)]

mod common;

mod admin;
mod chaos;
mod dashboard;
mod delivery;
mod delivery_kill;
mod events_inbound;
mod hostile;
mod metrics;
mod pgbouncer;
mod pipeline;
mod processes;
mod service;

//! What operators do to the pipeline's state, and the housekeeping that runs on a
//! schedule: [`retry`] (both retry endpoints call its one function), [`retention`] and
//! [`alerts`] (operational events to `HOOKQ_ALERT_URL`).
//! Each is a transition of the logs together with their jobs, so it lives here, beside
//! the queue, and not in an HTTP handler.

pub mod alerts;
pub mod retention;
pub mod retry;

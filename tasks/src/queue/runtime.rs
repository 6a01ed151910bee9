//! The floor of the worker engine: [`Runtime`], the one piece of state its rooms share
//! (slots, held leases, wake-up signals, the hard stop, the row-write lock), and
//! [`Settled`], how one run ended. Nothing else in the queue defines shared state, and
//! this file imports nothing of the engine but the job vocabulary.
//!
//! # Invariants, kept by the methods below (the fields are private)
//!
//! - **Every held job ends exactly once.** [`Runtime::hold`] counts each claimed job
//!   into the held leases and the busy slots; exactly one [`Runtime::finish`] follows
//!   (its run's outcome, or `Released` for a job never started), which frees the slot
//!   and queues the outcome; once the completer wrote it, [`Runtime::release_leases`]
//!   stops renewing the lease. A job is therefore leased from its claim until its
//!   outcome is in the table, never less.
//! - **One write at a time on held rows.** Lease renewal and outcome writes update the
//!   same held rows, and two statements locking them in different (hash-join) orders
//!   deadlock, which costs a second of `deadlock_timeout` and a retry. Both go through
//!   [`Runtime::write_held`], which serialises them.
//! - **Claims follow free slots.** [`Runtime::free_slots`] is what the producer may
//!   claim: never more than the free slots, and never so much that unwritten outcomes
//!   pile up (see its doc).

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::job::{JobId, JobOutput};

/// How one run of a job ended.
#[derive(Debug)]
pub(crate) enum Settled {
    /// Handler succeeded: archive as completed.
    Completed {
        id: JobId,
        attempt: i32,
        result: JobOutput,
    },
    /// Transient failure with attempts left: back to pending at now + delay.
    Retry {
        id: JobId,
        attempt: i32,
        error: String,
        delay: Duration,
    },
    /// Permanent failure, last attempt, undecodable or panicked: archive as dead.
    Dead {
        id: JobId,
        attempt: i32,
        error: String,
    },
    /// Not run to the end because this worker is stopping: back to pending, the claim
    /// undone (not a failed attempt).
    Released { id: JobId, attempt: i32 },
}

impl Settled {
    /// The claim this outcome settles: (job id, attempt).
    pub(crate) fn key(&self) -> (JobId, i32) {
        match *self {
            Settled::Completed { id, attempt, .. }
            | Settled::Retry { id, attempt, .. }
            | Settled::Dead { id, attempt, .. }
            | Settled::Released { id, attempt } => (id, attempt),
        }
    }
}

/// What every room of one worker run shares: who it is (pool, `locked_by`, task names)
/// and the state of its slots and leases.
pub(crate) struct Runtime {
    /// The queue's bookkeeping pool (asynchronous commit: see `sql::async_commit_pool`).
    pub(crate) pool: PgPool,
    /// `locked_by` of this run's claims.
    pub(crate) worker_id: String,
    /// Task names with a registered handler: the only ones this run claims or sweeps.
    pub(crate) task_names: Vec<&'static str>,
    /// Task names with a dead-letter hook (their dead jobs enter the hook outbox).
    pub(crate) hooked: Vec<String>,
    /// How long a claim is valid without renewal.
    pub(crate) lease: Duration,
    /// Jobs run at once.
    concurrency: usize,
    /// Jobs leased by this process (claimed, running, or outcome not yet written):
    /// id → attempt. The lease extender renews exactly these.
    held: Mutex<HashMap<JobId, i32>>,
    /// Claimed jobs whose run has not ended: the slots in use.
    busy: AtomicUsize,
    /// A slot or a lease was freed: the producer may claim again.
    pub(crate) slot_freed: Notify,
    /// Jobs may be ready (NOTIFY, reconnect, a sweep, a periodic tick, a retry due).
    pub(crate) wake: Notify,
    /// Jobs went dead: their hooks may have work.
    pub(crate) dead_letters: Notify,
    /// Fires `shutdown_timeout` after shutdown began: in-flight runs are cut off.
    pub(crate) hard_stop: CancellationToken,
    /// Held while a statement updates held rows (see the module doc).
    row_writes: tokio::sync::Mutex<()>,
    outcomes: mpsc::UnboundedSender<Settled>,
}

impl Runtime {
    /// A runtime and the receiving end of its outcomes (for the completer).
    pub(crate) fn new(
        pool: PgPool,
        worker_id: String,
        task_names: Vec<&'static str>,
        hooked: Vec<String>,
        lease: Duration,
        concurrency: usize,
    ) -> (Self, mpsc::UnboundedReceiver<Settled>) {
        let (outcomes, receiver) = mpsc::unbounded_channel();
        let rt = Self {
            pool,
            worker_id,
            task_names,
            hooked,
            lease,
            concurrency: concurrency.max(1),
            held: Mutex::default(),
            busy: AtomicUsize::new(0),
            slot_freed: Notify::new(),
            wake: Notify::new(),
            dead_letters: Notify::new(),
            hard_stop: CancellationToken::new(),
            row_writes: tokio::sync::Mutex::new(()),
            outcomes,
        };
        (rt, receiver)
    }

    pub(crate) fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The registered name equal to `name`, as the `'static` str handlers see.
    pub(crate) fn task_name(&self, name: &str) -> Option<&'static str> {
        self.task_names.iter().copied().find(|n| *n == name)
    }

    /// Slots the producer may claim for. Also bounded by outcomes not yet written, so a
    /// slow database slows claiming instead of piling up unacknowledged runs: at most
    /// eight times `concurrency` leases are held at once (runs plus outcomes waiting for
    /// their batch write). Eight is a generous bound, not a tuned value: it lets the
    /// completer's batches grow while the database is slow, and keeps the work a
    /// stalled process holds (and the lease extender renews) finite.
    pub(crate) fn free_slots(&self) -> usize {
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let backlog_room = (self.concurrency * 8).saturating_sub(held);
        self.concurrency
            .saturating_sub(self.busy.load(Ordering::Acquire))
            .min(backlog_room)
    }

    /// Claimed jobs `(id, attempt)`: each holds its lease and a slot until its
    /// [`finish`](Self::finish).
    pub(crate) fn hold(&self, claims: impl Iterator<Item = (JobId, i32)>) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, attempt) in claims {
            held.insert(id, attempt);
            self.busy.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The leases to renew: (ids, attempts), column-wise.
    pub(crate) fn held(&self) -> (Vec<JobId>, Vec<i32>) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, attempt)| (*id, *attempt))
            .unzip()
    }

    /// A run ended (or was never started): queue its outcome and free its slot. Called
    /// exactly once per held job.
    pub(crate) fn finish(&self, outcome: Settled) {
        // The completer outlives every run; if it is gone the process is exiting and
        // the lease sweep will recover the job.
        let _ = self.outcomes.send(outcome);
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.slot_freed.notify_one();
    }

    /// Outcomes written: stop renewing those leases.
    pub(crate) fn release_leases(&self, settled: impl Iterator<Item = (JobId, i32)>) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, attempt) in settled {
            if held.get(&id) == Some(&attempt) {
                held.remove(&id);
            }
        }
        drop(held);
        self.slot_freed.notify_one();
    }

    /// Runs `write`, a statement on rows this process holds (a lease renewal or an
    /// outcome batch), alone among such statements (see the module doc). The future
    /// does nothing until awaited, so its statement starts under the lock.
    pub(crate) async fn write_held<T>(&self, write: impl Future<Output = T>) -> T {
        let _rows = self.row_writes.lock().await;
        write.await
    }
}

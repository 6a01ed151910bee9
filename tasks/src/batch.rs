//! Group writes: concurrent callers' one-row statements become one statement per batch.
//!
//! Under load a worker runs dozens of jobs at once, each with its own one-row statement
//! on `webhook_logs`. Run side by side, those statements cost more than their work: a
//! round trip and executor start-up each, a WAL flush each when synchronous, and above
//! all dozens of backends fighting over the same few buffer locks (the table's last page
//! and the right-most leaf of every index on a time column). A [`GroupWriter`] hands
//! them to one task that writes whatever has queued up as one statement: one backend,
//! one round trip, one flush, while the next batch fills.
//!
//! Each caller still gets its own answer (the flush returns one per item, in order), and
//! a failed statement fails every caller of that batch, with nothing of it stored.
//! Intake's group commit ([`crate::intake`]) is one of these too, with items weighed by
//! their events and a short linger while another batch commits.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    time::Instant,
};

/// What a caller gets: its own answer, or the batch's error.
pub type Answer<O, E = sqlx::Error> = std::result::Result<O, Arc<E>>;

/// How a writer groups items.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// A batch is written once its items weigh this much; an item that would push it over
    /// starts the next batch (one heavier than this is written alone).
    pub max_batch: usize,
    /// Batches written at once (each on its own connection), so that one fills while
    /// another waits for its commit.
    pub in_flight: usize,
    /// While another batch is being written, a new one waits up to this long for more
    /// items before it is written. An idle writer writes at once, so a lone item never
    /// waits for company.
    pub linger: Duration,
    /// Items waiting for the writer before callers are held back.
    pub capacity: usize,
}

struct Request<I, O, E> {
    item: I,
    done: oneshot::Sender<Answer<O, E>>,
}

/// Cheap to clone; its task ends when the last clone is dropped, after writing what it
/// holds.
pub struct GroupWriter<I, O, E = sqlx::Error> {
    tx: mpsc::Sender<Request<I, O, E>>,
}

impl<I, O, E> Clone for GroupWriter<I, O, E> {
    fn clone(&self) -> Self {
        GroupWriter {
            tx: self.tx.clone(),
        }
    }
}

impl<I, O, E> GroupWriter<I, O, E>
where
    I: Send + 'static,
    O: Send + 'static,
    E: std::fmt::Display + Send + Sync + 'static,
{
    /// [`spawn`](Self::spawn) with every option, and `weight` saying what an item counts
    /// for against [`GroupOptions::max_batch`] (an ingest request weighs its events).
    pub fn with_options<F, Fut>(opts: GroupOptions, weight: fn(&I) -> usize, flush: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Vec<O>, E>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(opts.capacity.max(1));
        tokio::spawn(run(rx, opts, weight, Arc::new(flush)));
        GroupWriter { tx }
    }

    /// Queues `item` and waits for its batch to be written. `None` when the writer has
    /// stopped (its runtime is shutting down) or died mid-batch.
    pub async fn submit(&self, item: I) -> Option<Answer<O, E>> {
        let (done, answer) = oneshot::channel();
        self.tx.send(Request { item, done }).await.ok()?;
        answer.await.ok()
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupWriter<I, O> {
    /// Starts the writer on the current Tokio runtime: items of weight one, no lingering.
    /// `flush` writes one batch and returns one answer per item, in the items' order.
    pub fn spawn<F, Fut>(max_batch: usize, in_flight: usize, flush: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Vec<O>, sqlx::Error>> + Send + 'static,
    {
        let opts = GroupOptions {
            max_batch,
            in_flight,
            linger: Duration::ZERO,
            capacity: 4096,
        };
        Self::with_options(opts, |_| 1, flush)
    }

    /// [`submit`](Self::submit) for the use case: a database error, or a writer that
    /// has stopped, is a transient failure (the run is retried).
    pub async fn write(&self, item: I) -> hookq_core::error::Result<O> {
        use hookq_core::error::Error;
        match self.submit(item).await {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) => Err(Error::Upstream {
                message: format!("database: {e}"),
                retry_after: None,
            }),
            None => Err(Error::Upstream {
                message: "a batching writer has stopped".into(),
                retry_after: None,
            }),
        }
    }
}

/// Items gathered for one statement.
struct Batch<I, O, E> {
    requests: Vec<Request<I, O, E>>,
    weight: usize,
}

impl<I, O, E> Batch<I, O, E> {
    /// Adds `r` unless it would push the batch over `max`; then it starts the next one.
    fn add_or_carry(
        &mut self,
        r: Request<I, O, E>,
        weight: fn(&I) -> usize,
        max: usize,
        carry: &mut Option<Request<I, O, E>>,
    ) {
        let w = weight(&r.item);
        if !self.requests.is_empty() && self.weight + w > max {
            *carry = Some(r);
        } else {
            self.weight += w;
            self.requests.push(r);
        }
    }
}

async fn run<I, O, E, F, Fut>(
    mut rx: mpsc::Receiver<Request<I, O, E>>,
    opts: GroupOptions,
    weight: fn(&I) -> usize,
    flush: Arc<F>,
) where
    I: Send + 'static,
    O: Send + 'static,
    E: std::fmt::Display + Send + Sync + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Vec<O>, E>> + Send + 'static,
{
    let in_flight = opts.in_flight.max(1);
    let max = opts.max_batch.max(1);
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut carry: Option<Request<I, O, E>> = None;
    let mut open = true;
    while open || carry.is_some() {
        let mut batch = Batch {
            requests: Vec::new(),
            weight: 0,
        };
        match carry.take() {
            Some(r) => batch.add_or_carry(r, weight, max, &mut carry),
            None => match rx.recv().await {
                Some(r) => batch.add_or_carry(r, weight, max, &mut carry),
                None => break,
            },
        }

        // Write at once when a slot is free (an idle system pays no wait); while every
        // slot is busy, items arriving meanwhile join this batch.
        let permit = loop {
            if batch.weight >= max || carry.is_some() || !open {
                break acquire(&slots).await;
            }
            tokio::select! {
                biased;
                permit = acquire(&slots) => break permit,
                next = rx.recv() => match next {
                    Some(r) => batch.add_or_carry(r, weight, max, &mut carry),
                    None => open = false,
                },
            }
        };
        let Some(permit) = permit else { break };

        // Take what is already queued; while another batch is being written, linger a
        // little for more (its commit would make ours wait for the WAL anyway).
        let others_busy = slots.available_permits() + 1 < in_flight;
        let deadline = Instant::now()
            + if others_busy {
                opts.linger
            } else {
                Duration::ZERO
            };
        while open && carry.is_none() && batch.weight < max {
            match rx.try_recv() {
                Ok(r) => batch.add_or_carry(r, weight, max, &mut carry),
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::select! {
                        next = rx.recv() => match next {
                            Some(r) => batch.add_or_carry(r, weight, max, &mut carry),
                            None => open = false,
                        },
                        () = tokio::time::sleep_until(deadline) => break,
                    }
                }
            }
        }

        let flush = Arc::clone(&flush);
        tokio::spawn(async move {
            write(&*flush, batch.requests).await;
            drop(permit);
        });
    }
}

async fn acquire(slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    Arc::clone(slots).acquire_owned().await.ok()
}

/// Writes one batch and answers each of its callers.
async fn write<I, O, E, F, Fut>(flush: &F, requests: Vec<Request<I, O, E>>)
where
    E: std::fmt::Display,
    F: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = std::result::Result<Vec<O>, E>>,
{
    let (items, waiters): (Vec<I>, Vec<_>) = requests.into_iter().map(|r| (r.item, r.done)).unzip();
    let rows = items.len();
    match flush(items).await {
        Ok(answers) => {
            debug_assert_eq!(answers.len(), waiters.len());
            // A caller that went away (client disconnected) needs no answer.
            for (done, answer) in waiters.into_iter().zip(answers) {
                let _ = done.send(Ok(answer));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, rows, "a grouped write failed; nothing of it is stored");
            let e = Arc::new(e);
            for done in waiters {
                let _ = done.send(Err(Arc::clone(&e)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers reach their own callers, and items queued while a batch is being
    /// written go out together in the next one.
    #[tokio::test]
    async fn answers_reach_their_callers_and_waiting_items_share_a_batch() {
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let writer = GroupWriter::spawn(64, 1, move |items: Vec<u32>| {
            let seen = Arc::clone(&seen);
            let mut gate = gate_rx.clone();
            async move {
                seen.lock().unwrap().push(items.len());
                // The first batch waits until the test lets it go.
                gate.wait_for(|open| *open).await.unwrap();
                Ok(items.into_iter().map(|i| i * 10).collect())
            }
        });
        let first = tokio::spawn({
            let w = writer.clone();
            async move { w.submit(1).await }
        });
        // Wait until the first batch is being written, then queue ten more.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while sizes.lock().unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "first batch never written"
            );
            tokio::task::yield_now().await;
        }
        // A test runtime has one thread: a task that has bumped `queued` has also put
        // its item in the channel (the send completes in the same poll).
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let rest: Vec<_> = (2..12)
            .map(|i| {
                let w = writer.clone();
                let queued = Arc::clone(&queued);
                tokio::spawn(async move {
                    queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    w.submit(i).await
                })
            })
            .collect();
        while queued.load(std::sync::atomic::Ordering::SeqCst) < 10 {
            assert!(tokio::time::Instant::now() < deadline, "items never queued");
            tokio::task::yield_now().await;
        }
        gate_tx.send(true).unwrap();
        assert_eq!(first.await.unwrap().unwrap().unwrap(), 10);
        for (i, h) in (2..12).zip(rest) {
            assert_eq!(h.await.unwrap().unwrap().unwrap(), i * 10);
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 10]);
    }

    /// A failed statement fails every caller of its batch.
    #[tokio::test]
    async fn a_failed_batch_fails_each_caller() {
        let writer = GroupWriter::spawn(8, 1, |_items: Vec<u32>| async {
            Err::<Vec<u32>, _>(sqlx::Error::PoolTimedOut)
        });
        let answer = writer.submit(7).await.expect("writer running");
        assert!(matches!(*answer.unwrap_err(), sqlx::Error::PoolTimedOut));
    }
}

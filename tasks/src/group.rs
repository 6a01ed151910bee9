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

use std::{future::Future, sync::Arc};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// What a caller gets: its own answer, or the batch's database error.
pub type Answer<O> = std::result::Result<O, Arc<sqlx::Error>>;

struct Request<I, O> {
    item: I,
    done: oneshot::Sender<Answer<O>>,
}

/// Cheap to clone; its task ends when the last clone is dropped.
pub struct GroupWriter<I, O> {
    tx: mpsc::Sender<Request<I, O>>,
}

impl<I, O> Clone for GroupWriter<I, O> {
    fn clone(&self) -> Self {
        GroupWriter {
            tx: self.tx.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupWriter<I, O> {
    /// Starts the writer on the current Tokio runtime. `flush` writes one batch and
    /// returns one answer per item, in the items' order. At most `in_flight` batches
    /// are written at once (one fills while another waits for its commit), each of at
    /// most `max_batch` items.
    pub fn spawn<F, Fut>(max_batch: usize, in_flight: usize, flush: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Vec<O>, sqlx::Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(rx, max_batch.max(1), in_flight.max(1), Arc::new(flush)));
        GroupWriter { tx }
    }

    /// Queues `item` and waits for its batch to be written. `None` when the writer has
    /// stopped (its runtime is shutting down).
    pub async fn submit(&self, item: I) -> Option<Answer<O>> {
        let (done, answer) = oneshot::channel();
        self.tx.send(Request { item, done }).await.ok()?;
        answer.await.ok()
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

async fn run<I, O, F, Fut>(
    mut rx: mpsc::Receiver<Request<I, O>>,
    max_batch: usize,
    in_flight: usize,
    flush: Arc<F>,
) where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Vec<O>, sqlx::Error>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Write at once when a slot is free (an idle system pays no wait); while every
        // slot is busy, gather.
        let permit: Option<OwnedSemaphorePermit> = loop {
            if batch.len() >= max_batch {
                break Arc::clone(&slots).acquire_owned().await.ok();
            }
            tokio::select! {
                biased;
                p = Arc::clone(&slots).acquire_owned() => break p.ok(),
                next = rx.recv() => match next {
                    Some(r) => batch.push(r),
                    None => break Arc::clone(&slots).acquire_owned().await.ok(),
                },
            }
        };
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let flush = Arc::clone(&flush);
        tokio::spawn(async move {
            let (items, waiters): (Vec<I>, Vec<_>) =
                batch.into_iter().map(|r| (r.item, r.done)).unzip();
            let rows = items.len();
            match flush(items).await {
                Ok(answers) => {
                    debug_assert_eq!(answers.len(), waiters.len());
                    for (done, answer) in waiters.into_iter().zip(answers) {
                        let _ = done.send(Ok(answer));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows, "a grouped write failed; its runs will be retried");
                    let e = Arc::new(e);
                    for done in waiters {
                        let _ = done.send(Err(Arc::clone(&e)));
                    }
                }
            }
            drop(permit);
        });
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

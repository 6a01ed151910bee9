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
//!
//! # Lanes (contract section 10: one account's flood must not hold up another's replies)
//!
//! A writer built [`with_lanes`](GroupWriter::with_lanes) has two queues, each with its
//! own batches and statement slots: the bulk lane above, and an express lane of small
//! batches with a slot of its own. Which lane an item joins is the caller's
//! [`Lane`], chosen by [`LaneLoad`]: the express lane takes an item whose key (its
//! account, or its job's fair-share group) has nothing else in progress while another
//! key has (in an idle process there is no one to overtake), so an account
//! with one event at a time never waits for a flooded account's 256-row statement, nor
//! pays for its length. A flooded account always has company in progress, so its items
//! stay in bulk, and a cap on express items keeps many small accounts together from
//! turning the express lane into a second bulk lane. A run's lane is ambient
//! ([`in_lane`], a task-local), so the use case's ports need not carry it.
//!
//! The express lane writes on connections of its own ([`ExpressLane`]) from a thread of
//! its own ([`ExpressThread`]): through the shared pool and runtime, a lone event's
//! one-row statements still queued behind the flood's tasks. Measured with
//! `FAIRNESS_ONLY=1 scripts/bench` (a 20,000-comment burst on one account, one comment
//! every 100 ms on another, 2 × 256 slots, 2 cores), alternating with the code before
//! lanes: the quiet account's webhook → processed p50 53–60 ms before, 30–36 ms with
//! them; p99 149–153 ms before, 92–136 ms after. The express one-row writes take 5–6 ms
//! at p50 under the flood (9–11 ms through the shared pool and runtime); what is left
//! is the database's own queue, shared by both lanes: sampling `pg_stat_activity`, the
//! synchronous commits spend ~40 % of their time waiting for the WAL flush that the
//! flood's batches fill, and ~20 % on the buffer locks of the newest pages.
//! With the flooded account held to a reply rate (`FAIRNESS_FLOOD_LIMIT=500/s`, as
//! Meta would hold it), the database has room and the quiet p99 is 38–48 ms (57–66 ms
//! before lanes); unthrottled, the flood's drain takes both cores and the quiet p99
//! stays near 80–150 ms on this machine. Tried and not kept, no gain measured under
//! the unthrottled flood: HOT updates for the start (the status and `updated_at`
//! indexes dropped, fillfactor 70: a quarter of the log's updates went HOT, quiet p99
//! 150–210 ms) and no ping before each pooled connection's use (quiet p99 89–189 ms).

use std::{
    collections::HashMap,
    future::Future,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

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

/// Which of a writer's queues an item joins (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lane {
    /// The writer's main queue: batches up to its `max_batch`.
    #[default]
    Bulk,
    /// Small batches on a statement slot of their own, for keys with nothing else in
    /// progress. A writer without an express lane writes these in bulk.
    Express,
}

tokio::task_local! {
    static LANE: Lane;
}

/// Runs `fut` with `lane` as the lane of every write it submits without naming one.
pub async fn in_lane<F: Future>(lane: Lane, fut: F) -> F::Output {
    LANE.scope(lane, fut).await
}

/// The lane of the task's writes: the one [`in_lane`] set, else bulk.
pub fn current_lane() -> Lane {
    LANE.try_with(|lane| *lane).unwrap_or_default()
}

/// The express lane's own OS thread: a current-thread Tokio runtime that runs express
/// work (express runs, the writers' express queues, their statements' I/O), so that work
/// does not wait in the main runtime's queue behind a flood's hundreds of tasks, and a
/// thread that mostly sleeps is given a core as soon as it wakes. Cheap to clone; the
/// thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct ExpressThread {
    handle: tokio::runtime::Handle,
    _stop: Arc<oneshot::Sender<()>>,
}

impl std::fmt::Debug for ExpressThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpressThread").finish_non_exhaustive()
    }
}

impl ExpressThread {
    /// Starts the thread, named `name`.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(ExpressThread {
            handle,
            _stop: Arc::new(stop),
        })
    }

    /// Where express work is spawned.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

/// Where a process's express lanes write: their own connections, on their own thread
/// when one is given.
#[derive(Clone, Debug)]
pub struct ExpressLane {
    /// The lanes' own small pool ([`hookq_core::db::side_pool`]).
    pub pool: sqlx::PgPool,
    /// The thread their queues and statements run on; `None` runs them on the caller's
    /// runtime (tests).
    pub thread: Option<ExpressThread>,
}

impl ExpressLane {
    /// A lane of `connections` beside `pool`, with its own thread; should the thread not
    /// start (the process is out of threads), its queues and statements run on the
    /// caller's runtime, still on their own connections.
    pub fn start(pool: &sqlx::PgPool, connections: u32) -> Self {
        let thread = ExpressThread::start("hookq-express")
            .inspect_err(|e| tracing::warn!(error = %e, "the express lane's thread did not start"))
            .ok();
        ExpressLane {
            pool: hookq_core::db::side_pool(pool, connections),
            thread,
        }
    }

    /// A lane on `pool` itself and the caller's runtime (tests).
    pub fn inline(pool: &sqlx::PgPool) -> Self {
        ExpressLane {
            pool: pool.clone(),
            thread: None,
        }
    }

    /// A [`GroupWriter`] of items of weight one, no lingering, with an express lane of
    /// up to `express_batch` items one statement at a time: `flush` writes the bulk
    /// lane's batches on `pool` and the express lane's on this lane's connections and
    /// thread.
    pub fn writer<I, O, F, Fut>(
        &self,
        pool: sqlx::PgPool,
        max_batch: usize,
        in_flight: usize,
        express_batch: usize,
        flush: F,
    ) -> GroupWriter<I, O>
    where
        I: Send + 'static,
        O: Send + 'static,
        F: Fn(sqlx::PgPool, Vec<I>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Vec<O>, sqlx::Error>> + Send + 'static,
    {
        let opts = plain(max_batch, in_flight);
        let express = GroupOptions {
            max_batch: express_batch,
            in_flight: 1,
            ..opts.clone()
        };
        self.writer_with(opts, express, |_| 1, pool, flush)
    }

    /// [`writer`](Self::writer) with the two lanes' options and the items' weight given.
    pub fn writer_with<I, O, E, F, Fut>(
        &self,
        opts: GroupOptions,
        express: GroupOptions,
        weight: fn(&I) -> usize,
        pool: sqlx::PgPool,
        flush: F,
    ) -> GroupWriter<I, O, E>
    where
        I: Send + 'static,
        O: Send + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
        F: Fn(sqlx::PgPool, Vec<I>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Vec<O>, E>> + Send + 'static,
    {
        GroupWriter::with_lanes(
            opts,
            express,
            weight,
            (pool, self.pool.clone()),
            self.thread.as_ref(),
            flush,
        )
    }
}

/// Work in progress per key, which picks each new item's [`Lane`]: express when nothing
/// else of its key is in progress but something of another key is (an idle process has
/// no one to overtake), and fewer than `express_cap` express items are.
/// Cheap to clone (shared counts).
#[derive(Clone)]
pub struct LaneLoad {
    inner: Arc<Mutex<Load>>,
    express_cap: usize,
}

#[derive(Default)]
struct Load {
    by_key: HashMap<u64, usize>,
    /// Keyed items in progress, all keys together.
    total: usize,
    express: usize,
}

/// One item in progress; dropping it ends it.
pub struct LaneTicket {
    load: Arc<Mutex<Load>>,
    key: Option<u64>,
    lane: Lane,
}

impl LaneLoad {
    /// At most `express_cap` items in the express lane at once (0: never express).
    pub fn new(express_cap: usize) -> Self {
        LaneLoad {
            inner: Arc::default(),
            express_cap,
        }
    }

    /// Counts an item of `key` in progress until the ticket drops. Items without a key
    /// (no account, no group) go in bulk and are not counted.
    pub fn enter(&self, key: Option<&str>) -> LaneTicket {
        self.enter_all([key]).pop().expect("one ticket per key")
    }

    /// [`enter`](Self::enter) for items that arrive together (a claim's jobs): all are
    /// counted before any lane is chosen, so a quiet group's job is express even when
    /// it comes first in a claim with a flood's (entered one by one, it would have found
    /// nothing in progress to overtake), and a key with company in the batch is bulk.
    pub fn enter_all<'a>(
        &self,
        keys: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Vec<LaneTicket> {
        let keys: Vec<Option<u64>> = keys
            .into_iter()
            .map(|key| {
                key.filter(|k| !k.is_empty()).map(|k| {
                    let mut h = DefaultHasher::new();
                    k.hash(&mut h);
                    h.finish()
                })
            })
            .collect();
        let mut load = self.inner.lock().expect("lane load");
        for key in keys.iter().flatten() {
            load.total += 1;
            *load.by_key.entry(*key).or_insert(0) += 1;
        }
        keys.into_iter()
            .map(|key| {
                // Express only with someone to overtake: a lone item of an idle process
                // takes the path it always took (measured: the express hops cost an
                // idle webhook's p99 ~2 ms, 8.0 → 10.0 ms over 3 × 1,500 samples).
                let lane = match key {
                    Some(k)
                        if load.by_key[&k] == 1
                            && load.total > 1
                            && load.express < self.express_cap =>
                    {
                        load.express += 1;
                        Lane::Express
                    }
                    _ => Lane::Bulk,
                };
                LaneTicket {
                    load: Arc::clone(&self.inner),
                    key,
                    lane,
                }
            })
            .collect()
    }
}

impl std::fmt::Debug for LaneTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LaneTicket").field(&self.lane).finish()
    }
}

impl LaneTicket {
    /// The lane this item takes.
    pub fn lane(&self) -> Lane {
        self.lane
    }
}

impl Drop for LaneTicket {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut load = self.load.lock().expect("lane load");
        load.total -= 1;
        if self.lane == Lane::Express {
            load.express -= 1;
        }
        if let Some(n) = load.by_key.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                load.by_key.remove(&key);
            }
        }
    }
}

/// Cheap to clone; its tasks end when the last clone is dropped, after writing what they
/// hold.
pub struct GroupWriter<I, O, E = sqlx::Error> {
    tx: mpsc::Sender<Request<I, O, E>>,
    /// The express lane's queue, when the writer has one.
    express: Option<mpsc::Sender<Request<I, O, E>>>,
}

impl<I, O, E> Clone for GroupWriter<I, O, E> {
    fn clone(&self) -> Self {
        GroupWriter {
            tx: self.tx.clone(),
            express: self.express.clone(),
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
        GroupWriter { tx, express: None }
    }

    /// [`with_options`](Self::with_options) plus an express lane grouped by `express`
    /// (its own batches and statement slots: see the module doc): `flush` writes the
    /// bulk lane's batches on the first of `targets` and the express lane's on the
    /// second (their own connections), on `express_on` when given.
    pub fn with_lanes<C, F, Fut>(
        opts: GroupOptions,
        express: GroupOptions,
        weight: fn(&I) -> usize,
        (bulk_on, express_to): (C, C),
        express_on: Option<&ExpressThread>,
        flush: F,
    ) -> Self
    where
        C: Clone + Send + Sync + 'static,
        F: Fn(C, Vec<I>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Vec<O>, E>> + Send + 'static,
    {
        let on = |target: C| {
            let flush = flush.clone();
            Arc::new(move |batch| flush(target.clone(), batch))
        };
        let (tx, rx) = mpsc::channel(opts.capacity.max(1));
        tokio::spawn(run(rx, opts, weight, on(bulk_on)));
        let (express_tx, express_rx) = mpsc::channel(express.capacity.max(1));
        let express_run = run(express_rx, express, weight, on(express_to));
        match express_on {
            Some(thread) => drop(thread.handle().spawn(express_run)),
            None => drop(tokio::spawn(express_run)),
        }
        GroupWriter {
            tx,
            express: Some(express_tx),
        }
    }

    /// Queues `item` in the task's [`current_lane`] and waits for its batch to be
    /// written. `None` when the writer has stopped (its runtime is shutting down) or died
    /// mid-batch.
    pub async fn submit(&self, item: I) -> Option<Answer<O, E>> {
        self.submit_in(current_lane(), item).await
    }

    /// [`submit`](Self::submit) in `lane`.
    pub async fn submit_in(&self, lane: Lane, item: I) -> Option<Answer<O, E>> {
        let tx = match (lane, &self.express) {
            (Lane::Express, Some(express)) => express,
            _ => &self.tx,
        };
        let (done, answer) = oneshot::channel();
        tx.send(Request { item, done }).await.ok()?;
        answer.await.ok()
    }
}

/// Options of a writer with items of weight one and no lingering.
fn plain(max_batch: usize, in_flight: usize) -> GroupOptions {
    GroupOptions {
        max_batch,
        in_flight,
        linger: Duration::ZERO,
        capacity: 4096,
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
        Self::with_options(plain(max_batch, in_flight), |_| 1, flush)
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

    /// A claim's jobs enter together: the quiet group's job is express though it comes
    /// first, the flood's are bulk, and a batch of one key alone has no one to overtake.
    #[test]
    fn a_batch_enters_together() {
        let load = LaneLoad::new(4);
        let lanes = |t: &[LaneTicket]| t.iter().map(LaneTicket::lane).collect::<Vec<_>>();
        let batch = load.enter_all([Some("quiet"), Some("flood"), Some("flood"), None]);
        assert_eq!(
            lanes(&batch),
            vec![Lane::Express, Lane::Bulk, Lane::Bulk, Lane::Bulk]
        );
        drop(batch);
        assert_eq!(lanes(&load.enter_all([Some("flood")])), vec![Lane::Bulk]);
        let alone = load.enter_all([Some("flood"), Some("flood")]);
        assert_eq!(lanes(&alone), vec![Lane::Bulk, Lane::Bulk]);
        // Two groups with one job each, the flood still in progress: both express.
        let two = load.enter_all([Some("a"), Some("b")]);
        assert_eq!(lanes(&two), vec![Lane::Express, Lane::Express]);
    }

    /// A key's first item in progress is express when another key has work in
    /// progress, its company bulk; an item of an idle process is bulk; the express lane
    /// is capped; no key, no express.
    #[test]
    fn a_key_with_nothing_in_progress_goes_express_past_another() {
        let load = LaneLoad::new(2);
        let a1 = load.enter(Some("flood"));
        assert_eq!(a1.lane(), Lane::Bulk, "nothing to overtake");
        let a2 = load.enter(Some("flood"));
        let b1 = load.enter(Some("quiet"));
        assert_eq!((a2.lane(), b1.lane()), (Lane::Bulk, Lane::Express));
        let c1 = load.enter(Some("third"));
        assert_eq!(c1.lane(), Lane::Express);
        // Two express items in progress: the cap.
        assert_eq!(load.enter(Some("fourth")).lane(), Lane::Bulk);
        drop(b1);
        let b2 = load.enter(Some("quiet"));
        assert_eq!(b2.lane(), Lane::Express);
        // "flood" still has a2 in progress after a1 ends.
        drop(a1);
        assert_eq!(load.enter(Some("flood")).lane(), Lane::Bulk);
        drop((a2, b2, c1));
        // Idle again: nothing to overtake.
        assert_eq!(load.enter(Some("quiet")).lane(), Lane::Bulk);
        let busy = load.enter(Some("flood"));
        assert_eq!(load.enter(None).lane(), Lane::Bulk);
        assert_eq!(load.enter(Some("")).lane(), Lane::Bulk);
        assert_eq!(load.enter(Some("quiet")).lane(), Lane::Express);
        drop(busy);
        assert_eq!(current_lane(), Lane::Bulk);
    }

    /// An express item is written while the bulk lane's statement is stuck, by the
    /// express flush; the bulk item waits for its own.
    #[tokio::test]
    async fn an_express_item_does_not_wait_for_a_bulk_statement() {
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let flush = move |lane: &'static str, items: Vec<u32>| {
            let mut gate = gate_rx.clone();
            async move {
                if lane == "bulk" {
                    gate.wait_for(|open| *open).await.unwrap();
                }
                Ok(items.into_iter().map(|i| (lane, i)).collect())
            }
        };
        let (opts, express) = (plain(64, 1), plain(8, 1));
        let writer: GroupWriter<u32, (&str, u32)> =
            GroupWriter::with_lanes(opts, express, |_| 1, ("bulk", "express"), None, flush);
        let bulk = tokio::spawn({
            let w = writer.clone();
            async move { w.submit(1).await }
        });
        let express = in_lane(Lane::Express, writer.submit(2)).await;
        assert_eq!(express.unwrap().unwrap(), ("express", 2));
        assert!(!bulk.is_finished());
        gate_tx.send(true).unwrap();
        assert_eq!(bulk.await.unwrap().unwrap().unwrap(), ("bulk", 1));
    }

    /// The express thread runs what is spawned on it, off the caller's runtime, and
    /// stops with its last handle.
    #[tokio::test]
    async fn the_express_thread_runs_work_on_its_own_thread() {
        let thread = ExpressThread::start("hookq-express-test").unwrap();
        let name = thread
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("hookq-express-test"));
        let handle = thread.handle().clone();
        drop(thread);
        // Its runtime shuts down: work spawned afterwards never runs.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match handle.spawn(async {}).await {
                Err(e) if e.is_cancelled() => break,
                _ => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "thread never stopped"
                    );
                    tokio::task::yield_now().await;
                }
            }
        }
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

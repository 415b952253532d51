//! The worker: runs what is runnable with bounded concurrency and commits
//! the outcomes in groups.
//!
//! ```text
//!   HTTP handlers ──requests──▶ ┌────────┐ ──claims──▶ run threads (N)
//!                               │ writer │                 │ run + prepare
//!   waiters, events ◀─reports── └────────┘ ◀──finished runs┘
//! ```
//!
//! One writer thread owns every write: each round is one transaction
//! ([`Executor::write_round`]) that records the requests that arrived,
//! commits the runs that finished (each ending its request and lease),
//! renews leases now and then, and claims as much runnable work as there
//! are idle run threads. Work is claimed through the store only (requests
//! and due timers under expiring leases, see [`crate::store`]'s work
//! contract), so the same loop serves any number of servers sharing a
//! database, and a server that starts after a crash finds what the dead
//! one left: its requests, its overdue timers, its leases to take over.
//! While a round's transaction runs, the next round's items pile up: the
//! busier the server, the more each transaction holds.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{broadcast, oneshot};

use crate::executor::script::{Language, Runtimes};
use crate::executor::{Executor, Ran, Report, Round};
use crate::runtime::{Output, now_ms, workflow_thread_stack};
use crate::snapshot::ModuleHash;
use crate::store::{Checkpointer, Claim, Database, InstanceId, Request};

/// How long a claimed lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// How often leases of runs in progress are renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// How many claims may wait for a run thread, per run thread: enough that
/// run threads never wait for the writer's next round, and that each
/// round has many outcomes to commit together. At most `workers` runs
/// execute at once either way.
const CLAIM_AHEAD: usize = 32;

/// How long an idle writer waits before it looks for work that other
/// processes recorded (it is woken at once for work of its own, and for
/// its next timer).
const POLL: Duration = Duration::from_millis(500);

/// What the worker tells as it goes: the web page's live updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// This instance changed: created, requested, claimed or committed.
    Instance(InstanceId),
    /// The server is shutting down: streams of changes end.
    Closing,
}

/// The error of a request made while the server shuts down (HTTP 503).
#[derive(Debug)]
pub struct ShuttingDown;

impl std::fmt::Display for ShuttingDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server is shutting down")
    }
}

impl std::error::Error for ShuttingDown {}

/// The answer to a request: the version it resumes, or why it was refused.
type RequestReply = oneshot::Sender<Result<Option<u32>>>;

/// The answer to a waiter: what the instance's next run committed.
type Waiter = oneshot::Sender<Result<Report, String>>;

/// The worker: a writer thread and `workers` run threads.
pub struct Worker {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// A connection of its own for reads, so that they never wait for the
    /// writer's transactions (WAL readers do not block on the writer).
    reader: Database,
    /// The script runtimes added to the database, by language.
    runtimes: Runtimes,
    /// SQLite's log checkpoints, off the writer's thread; declared last so
    /// that it stops after the threads.
    _checkpointer: Option<Checkpointer>,
}

/// How often the log of a SQLite database is checkpointed while a server
/// runs: at 3,000 versions a second of one changed page, about 10 MB of
/// log between two checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

struct Shared {
    executor: Executor,
    workers: usize,
    stdout: Output,
    state: Mutex<State>,
    /// The writer waits on it for requests, finished runs and stopping.
    writer_wakes: Condvar,
    /// Run threads wait on it for claims.
    claims_ready: Condvar,
    changes: broadcast::Sender<Change>,
}

#[derive(Default)]
struct State {
    requests: Vec<(InstanceId, Request, bool, RequestReply)>,
    claims: VecDeque<Claim>,
    finished: Vec<Ran>,
    /// Runs claimed and not yet committed.
    busy: usize,
    waiters: HashMap<InstanceId, Vec<Waiter>>,
    stopping: bool,
    /// Set by the writer when it has stopped; run threads then stop too.
    stopped: bool,
}

impl Worker {
    /// Starts the writer and `workers` run threads over `executor`.
    pub fn start(executor: Executor, workers: usize, stdout: Output) -> Result<Worker> {
        let reader = Database::open(executor.database().path())?;
        let checkpointer = executor
            .database()
            .checkpoint_in_background(CHECKPOINT_EVERY)?;
        let (changes, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            executor,
            workers: workers.max(1),
            stdout,
            state: Mutex::new(State::default()),
            writer_wakes: Condvar::new(),
            claims_ready: Condvar::new(),
            changes,
        });
        let mut threads = Vec::new();
        let writer = Arc::clone(&shared);
        threads.push(spawn("wasnap-writer", None, move || writer.write_rounds()));
        // Run threads with room for the engine's Wasm stack: a run then
        // takes place on them, not on a thread started for each run.
        let stack = workflow_thread_stack(shared.executor.engine().max_wasm_stack());
        for i in 0..shared.workers {
            let runner = Arc::clone(&shared);
            let name = format!("wasnap-run-{i}");
            threads.push(spawn(&name, Some(stack), move || runner.run_claims()));
        }
        Ok(Worker {
            shared,
            threads: Mutex::new(threads),
            reader,
            runtimes: Runtimes::default(),
            _checkpointer: checkpointer,
        })
    }

    /// The database, for reads (see [`Worker::executor`] for writes).
    pub fn reader(&self) -> &Database {
        &self.reader
    }

    /// The executor the worker runs with.
    pub fn executor(&self) -> &Executor {
        &self.shared.executor
    }

    /// The hash of `language`'s runtime module, added to the database the
    /// first time a script of it starts and whenever its file changed.
    pub fn runtime(&self, language: Language) -> Result<ModuleHash> {
        self.runtimes.add(self.executor(), language)
    }

    /// Changes to instances, as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    /// Tells subscribers that `instance` changed outside the worker (it was
    /// created).
    pub fn changed(&self, instance: InstanceId) {
        let _ = self.shared.changes.send(Change::Instance(instance));
    }

    /// Records `request` in the writer's next round and waits for its
    /// run's outcome: the version it resumes is known when the round
    /// commits, the report when the run's own round does. `timeout` bounds
    /// the wait for the run (not for the request): `Ok(None)` when it
    /// passed and the run goes on.
    pub async fn request(
        &self,
        instance: InstanceId,
        request: Request,
        branch: bool,
        timeout: Duration,
    ) -> Result<Option<Report>> {
        let (recorded_tx, recorded) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if state.stopping {
                return Err(ShuttingDown.into());
            }
            // Registered before the request, so that a run that ends at
            // once is not missed.
            state.waiters.entry(instance).or_default().push(done_tx);
            state
                .requests
                .push((instance, request, branch, recorded_tx));
        }
        self.shared.writer_wakes.notify_one();
        let recorded = recorded.await.map_err(|_| ShuttingDown)?;
        if let Err(error) = recorded {
            drop(done);
            self.shared.forget_waiters(instance);
            return Err(error);
        }
        let _ = self.shared.changes.send(Change::Instance(instance));
        match tokio::time::timeout(timeout, done).await {
            Ok(Ok(Ok(report))) => Ok(Some(report)),
            Ok(Ok(Err(message))) => Err(anyhow::anyhow!(message)),
            // The server stopped first: the request stays recorded, and
            // the next server runs it.
            Ok(Err(_)) => Err(ShuttingDown.into()),
            Err(_) => Ok(None),
        }
    }

    /// Stops claiming work, lets the runs in progress finish and commit
    /// (up to `grace`), and stops the threads. Runs still going after
    /// `grace` are abandoned: nothing of them is committed, their requests
    /// stay recorded, and their leases end with the process, so the next
    /// server runs them again.
    pub fn stop(&self, grace: Duration) {
        self.shared.lock().stopping = true;
        let _ = self.shared.changes.send(Change::Closing);
        self.shared.writer_wakes.notify_all();
        let deadline = Instant::now() + grace;
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Starts a thread named `name`, with a stack of `stack` bytes if given
/// (else Rust's default).
fn spawn(name: &str, stack: Option<usize>, body: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let builder = std::thread::Builder::new().name(name.to_string());
    let builder = match stack {
        Some(bytes) => builder.stack_size(bytes),
        None => builder,
    };
    builder.spawn(body).expect("a thread can be started")
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the waiters of `instance` that nobody waits on any more.
    fn forget_waiters(&self, instance: InstanceId) {
        let mut state = self.lock();
        if let Some(waiters) = state.waiters.get_mut(&instance) {
            waiters.retain(|w| !w.is_closed());
            if waiters.is_empty() {
                state.waiters.remove(&instance);
            }
        }
    }

    /// The writer's loop: one transaction per round, until stopped and
    /// every claimed run is committed.
    fn write_rounds(&self) {
        let mut last_renewal = Instant::now();
        let mut idle_until: Option<Instant> = None;
        loop {
            let (requests, runs, claim) = {
                let mut state = self.lock();
                loop {
                    let has_items = !state.requests.is_empty() || !state.finished.is_empty();
                    if state.stopping {
                        // Claims no run thread took yet are given back
                        // (their leases released) rather than started.
                        let unstarted: Vec<Claim> = state.claims.drain(..).collect();
                        if !unstarted.is_empty() {
                            for claim in &unstarted {
                                let instance = claim.lease.instance();
                                let gone = "the server is shutting down".to_string();
                                resolve(&mut state, instance, Err(gone));
                            }
                            drop(state);
                            drop(unstarted);
                            state = self.lock();
                            continue;
                        }
                        if state.busy == 0 && !has_items {
                            state.stopped = true;
                            // Requests recorded but not run: their waiters
                            // are told the server stops.
                            state.waiters.clear();
                            self.claims_ready.notify_all();
                            return;
                        }
                    }
                    let free = self.room(&state);
                    let now = Instant::now();
                    let may_claim = idle_until.is_none_or(|t| now >= t);
                    if has_items || (may_claim && free > 0 && !state.stopping) {
                        break;
                    }
                    let wait = idle_until.map_or(POLL, |t| t.saturating_duration_since(now));
                    state = self
                        .writer_wakes
                        .wait_timeout(state, wait.clamp(Duration::from_millis(1), POLL))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                let claim = if state.stopping { 0 } else { self.room(&state) };
                (
                    std::mem::take(&mut state.requests),
                    std::mem::take(&mut state.finished),
                    claim,
                )
            };
            let renew = last_renewal.elapsed() >= RENEW_EVERY;
            if renew {
                last_renewal = Instant::now();
            }
            let claimed_any = self.write_round(requests, runs, claim, renew);
            // Nothing to claim: sleep until the next timer or a poll.
            idle_until = if claimed_any || claim == 0 {
                None
            } else {
                Some(self.next_look())
            };
        }
    }

    /// How many more claims may be taken now.
    fn room(&self, state: &State) -> usize {
        (self.workers * CLAIM_AHEAD).saturating_sub(state.busy + state.claims.len())
    }

    /// When to look for work again when none was found: at the next timer,
    /// or after a poll. A timer that is due already but was not claimable
    /// (its instance is leased: running here, or held by another process)
    /// is looked at again after a poll, not at once.
    fn next_look(&self) -> Instant {
        let now = Instant::now();
        match self.executor.database().next_wake_at() {
            Ok(Some(at)) if at > now_ms() => {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                (now + wait).min(now + POLL)
            }
            _ => now + POLL,
        }
    }

    /// One round; returns whether it claimed work.
    fn write_round(
        &self,
        requests: Vec<(InstanceId, Request, bool, RequestReply)>,
        runs: Vec<Ran>,
        claim: usize,
        renew: bool,
    ) -> bool {
        let (items, replies): (Vec<_>, Vec<_>) = requests
            .into_iter()
            .map(|(instance, request, branch, reply)| ((instance, request, branch), reply))
            .unzip();
        let ran: Vec<InstanceId> = runs.iter().map(Ran::instance).collect();
        let round = Round {
            requests: items,
            runs,
            renew,
            claim,
            ttl: LEASE_TTL,
        };
        let done = match self.executor.write_round(round) {
            Ok(done) => done,
            Err(error) => {
                // The transaction failed as a whole: nothing of it is
                // written. Requests are refused; runs are abandoned (their
                // requests stay recorded and are claimed again).
                let message = crate::executor::one_line(&error);
                eprintln!("wasnap serve: a write to the database failed: {message}");
                for reply in replies {
                    let _ = reply.send(Err(anyhow::anyhow!("{message}")));
                }
                let mut state = self.lock();
                let ended = ran.len().min(state.busy);
                state.busy -= ended;
                for instance in ran {
                    resolve(&mut state, instance, Err(message.clone()));
                }
                drop(state);
                std::thread::sleep(Duration::from_millis(100));
                return false;
            }
        };
        for (reply, result) in replies.into_iter().zip(done.requests) {
            let _ = reply.send(result);
        }
        let claimed = !done.claims.is_empty();
        let mut changed = Vec::new();
        {
            let mut state = self.lock();
            let ended = ran.len().min(state.busy);
            state.busy -= ended;
            for (instance, report) in ran.into_iter().zip(done.reports) {
                let report = report.map_err(|e| crate::executor::one_line(&e));
                resolve(&mut state, instance, report);
                changed.push(instance);
            }
            for claim in done.claims {
                changed.push(claim.lease.instance());
                state.claims.push_back(claim);
            }
        }
        self.claims_ready.notify_all();
        for instance in changed {
            let _ = self.changes.send(Change::Instance(instance));
        }
        claimed
    }

    /// A run thread's loop: take a claim, run it, hand the outcome to the
    /// writer.
    fn run_claims(&self) {
        loop {
            let claim = {
                let mut state = self.lock();
                loop {
                    if let Some(claim) = state.claims.pop_front() {
                        state.busy += 1;
                        break claim;
                    }
                    if state.stopped {
                        return;
                    }
                    state = self
                        .claims_ready
                        .wait(state)
                        .unwrap_or_else(|e| e.into_inner());
                }
            };
            let instance = claim.lease.instance();
            let ran = self.executor.run_claim(claim, &self.stdout);
            let mut state = self.lock();
            match ran {
                Ok(ran) => state.finished.push(ran),
                Err(error) => {
                    // Not even a failed version could be prepared; the
                    // lease is released (dropped) and the work stays for
                    // another try.
                    state.busy -= 1;
                    resolve(&mut state, instance, Err(crate::executor::one_line(&error)));
                }
            }
            drop(state);
            self.writer_wakes.notify_one();
        }
    }
}

/// Hands a run's outcome to whoever waits for the instance.
fn resolve(state: &mut State, instance: InstanceId, outcome: Result<Report, String>) {
    if let Some(waiters) = state.waiters.remove(&instance) {
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }
}

//! `wasnap serve`: the workflow service. An HTTP API (JSON, described at
//! `/api/openapi.json`), a web page at `/` for the people who answer the
//! questions, and a worker that runs whatever is runnable: a reply
//! arrived, a timer fell due.
//!
//! ```text
//! api      routes and handlers: HTTP in, JSON out, errors as {"error"}
//! json     instances and versions as the API shows them
//! page     the web page, plain HTML/CSS/JS built into the binary
//! worker   the writer thread (group commits, claims) and the run threads
//! ```
//!
//! Everything durable goes through the store: a request is recorded before
//! it runs, a run's outcome is committed with the end of its request, and
//! work is claimed under expiring leases. So a server that is killed loses
//! nothing committed, and the next one picks up what was left; several
//! servers may share one database.

mod api;
mod json;
mod page;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::executor::Executor;
use crate::runtime::Output;

pub use worker::Worker;

/// How a server is set up.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// How many workflows run at once.
    pub workers: usize,
    /// How many suspended workflows are kept in memory, so that resuming
    /// the latest version of a busy instance skips restoring it.
    pub live: usize,
    /// How long shutdown waits for runs in progress.
    pub grace: Duration,
    /// Where workflows' stdout goes.
    pub stdout: Output,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8480)),
            workers: 2,
            live: 1024,
            grace: Duration::from_secs(10),
            stdout: Output::Inherit,
        }
    }
}

/// A running server: its HTTP side on a tokio runtime, its worker on
/// threads of its own.
pub struct Server {
    address: SocketAddr,
    worker: Arc<Worker>,
    runtime: tokio::runtime::Runtime,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    grace: Duration,
    /// Resolves at the first SIGTERM or Ctrl-C; the handlers are
    /// installed when the server starts, so a signal never finds the
    /// process without them.
    signalled: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Server {
    /// Binds the address and starts serving.
    pub fn start(executor: Executor, options: ServeOptions) -> Result<Server> {
        let executor = executor.keep_live(options.live);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wasnap-http")
            .enable_all()
            .build()
            .context("cannot start the HTTP runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(options.listen))
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        let address = listener.local_addr()?;
        let worker = Arc::new(Worker::start(executor, options.workers, options.stdout)?);
        let router = api::router(Arc::clone(&worker));
        let signals = runtime.block_on(async { Signals::install() })?;
        let (signal_tx, signalled) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            signals.received().await;
            let _ = signal_tx.send(());
        });
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let http = runtime.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Server {
            address,
            worker,
            runtime,
            shutdown: Some(shutdown),
            http: Some(http),
            grace: options.grace,
            signalled: Some(signalled),
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Waits for SIGTERM or Ctrl-C, then shuts down gracefully.
    pub fn run_until_signalled(mut self) -> Result<()> {
        if let Some(signalled) = self.signalled.take() {
            let _ = self.runtime.block_on(signalled);
        }
        eprintln!("wasnap serve: shutting down: finishing the runs in progress");
        self.shutdown()
    }

    /// Stops: no new connections; the worker claims nothing more, and runs
    /// in progress finish and commit (up to the grace period; those still
    /// running then are abandoned and run again by the next server); then
    /// the HTTP side closes.
    pub fn shutdown(mut self) -> Result<()> {
        self.worker.stop(self.grace);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(http) = self.http.take() {
            let closed = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), http).await });
            if let Ok(Ok(Err(error))) = closed {
                return Err(error).context("the HTTP server failed");
            }
        }
        Ok(())
    }
}

/// The signals that stop a server: SIGTERM and SIGINT (Ctrl-C).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside a runtime).
    fn install() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Resolves at the first of them.
    async fn received(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

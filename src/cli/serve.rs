//! `wasnap serve [--listen ADDR] [--workers N]`

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;
use clap::Args;
use wasnap::server::{ServeOptions, Server};

/// Serve the HTTP API and the web page, and run what is runnable: replies
/// that arrived, timers that fell due (also those that fell due while no
/// server ran). Stops gracefully on SIGTERM or Ctrl-C.
#[derive(Args, Debug)]
pub struct Serve {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// How many workflows run at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
    #[command(flatten)]
    engine: super::session::EngineArgs,
}

impl Serve {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let executor = super::session::open(db, &self.engine)?;
        let options = ServeOptions {
            listen: self.listen,
            workers: usize::from(self.workers),
            ..ServeOptions::default()
        };
        let server = Server::start(executor, options)?;
        eprintln!(
            "wasnap: serving {} on http://{} (Ctrl-C to stop)",
            db.display(),
            server.address()
        );
        server.run_until_signalled()?;
        eprintln!("wasnap: stopped");
        Ok(())
    }
}

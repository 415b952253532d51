//! `wasnap migrate --from DB --to DB`

use anyhow::Result;
use clap::Args;

use wasnap::store::{Database, Location};

/// Copy every instance, with its version tree, from one database to
/// another: SQLite to PostgreSQL or back. Ids and version numbers are
/// kept; instances copied by an earlier run are left alone. Stop the
/// workers of the source first.
#[derive(Args, Debug)]
pub struct Migrate {
    /// The database to copy from: `sqlite:PATH`, a path, or a PostgreSQL
    /// URL.
    #[arg(long, value_name = "DB")]
    from: String,
    /// The database to copy into (created when it is a new SQLite file).
    #[arg(long, value_name = "DB")]
    to: String,
}

impl Migrate {
    pub(super) fn execute(self) -> Result<()> {
        let from = Location::parse(&self.from);
        if let Location::Sqlite(path) = &from {
            super::require_file(path)?;
        }
        let source = Database::open_at(from)?;
        let target = Database::open_at(Location::parse(&self.to))?;
        let report = target.copy_from(&source)?;
        eprintln!(
            "wasnap: copied {} instances ({} versions) from {} to {}{}",
            report.instances,
            report.versions,
            source.location(),
            target.location(),
            match report.present {
                0 => String::new(),
                n => format!("; {n} were there already"),
            }
        );
        Ok(())
    }
}

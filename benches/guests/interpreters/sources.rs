//! Nothing: this package only names the crates whose C sources the
//! interpreter guests are compiled from (see Cargo.toml).

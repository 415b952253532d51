//! Nothing: this package only names the crate whose C sources the JavaScript
//! runtime is compiled from (see Cargo.toml).

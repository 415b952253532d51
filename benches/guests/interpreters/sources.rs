//! Nothing: this package only names the crate whose C sources the Lua
//! guest is compiled from (see Cargo.toml).

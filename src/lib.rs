//! `runner`: a batch experiment runner for convolutional-network architecture studies.
//!
//! The binary is a thin shell over this library: [`cli`] parses the command line and
//! [`commands`] runs it; everything is here, where tests can call it.

// Plugins are written against the public API (`runner::arch`, `runner::nn`) so that one can
// move into a crate of its own unchanged; this makes those paths resolve inside the library.
extern crate self as runner;

pub mod arch;
pub mod cli;
pub mod commands;
pub mod data;
pub mod error;
pub mod grid;
pub mod memory;
pub mod nn;
pub mod report;
pub mod rng;
pub mod serve;
pub mod store;
#[doc(hidden)]
pub mod testdb;
pub mod train;

pub use error::{Error, Result};

#[path = "../plugins/mod.rs"]
pub mod plugins;

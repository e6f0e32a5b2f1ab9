//! Training: the `[train]` configuration, the learning-rate policy and the optimiser. The
//! trainer loop that runs a trial on its own thread builds on these.

pub mod config;
pub mod optim;
pub mod schedule;

pub use config::TrainConfig;

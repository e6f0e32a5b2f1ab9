//! Training: the `[train]` configuration, the learning-rate policy, the optimiser, checkpoint
//! bytes, and the trainer that runs one trial on its own thread and reports events.

pub mod checkpoint;
pub mod config;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{train, Evaluation, Event, Outcome, Resume, Trial};

#[cfg(test)]
mod tests;

//! The architecture registry: every plugin the runner knows, in one explicit list.
//!
//! To add an architecture, write `plugins/NAME.rs` implementing `runner::arch::Architecture`
//! (using only `runner::arch` and `runner::nn`) and add it to `ALL` below; README.md's "Write
//! your own architecture" walks through one.

pub mod plain;
pub mod resnet;
pub mod vgg;
pub mod wrn;

use runner::arch::Architecture;

/// Every registered architecture, in the order `runner list archs` shows them.
pub static ALL: &[&dyn Architecture] = &[&plain::Plain, &resnet::ResNet, &wrn::Wrn, &vgg::Vgg];

/// The architecture called `name`.
pub fn find(name: &str) -> Option<&'static dyn Architecture> {
    ALL.iter().copied().find(|a| a.name() == name)
}

/// The registered names, for error messages.
pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|a| a.name()).collect()
}

#[cfg(test)]
mod tests;

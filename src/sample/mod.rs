//! Samplers, schedules and seeded noise, independent of any model.

pub mod names;

pub use names::{Sampler, Scheduler};

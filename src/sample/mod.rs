//! Samplers, schedules and seeded noise, independent of any model.

//! The one place that prints progress and tables: typed events in, text out.

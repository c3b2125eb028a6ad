//! Inventories: what a weight file holds (names, shapes, dtypes, bytes), read from headers
//! only, grouped into placement units by model family.

//! The planner: a pure function of manifest + hardware + inventories to a `Plan`: each
//! unit's home device, bytes per device, working set, predicted step time.

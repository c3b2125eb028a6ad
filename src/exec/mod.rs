//! The executor: load, patch LoRAs, distribute, stream units, run the batched job queue.
//! The only place where weights move.

//! Model code (candle). Only computes: weights are handed to each block by the executor.

//! The machine as a value: devices (memory, measured TFLOP/s) and directed links (GB/s),
//! from `mgpu probe` or a hardware TOML file, so plans can be made anywhere.

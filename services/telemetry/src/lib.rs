//! kraken-telemetry (being written).

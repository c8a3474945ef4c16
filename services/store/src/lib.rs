//! kraken-store (being written).

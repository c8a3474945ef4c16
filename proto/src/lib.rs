//! kraken-proto (being written).

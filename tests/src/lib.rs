//! kraken-tests (being written).

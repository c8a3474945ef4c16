//! kraken-tls (being written).

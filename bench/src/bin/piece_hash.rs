//! Piece hash benchmark: the measurement that chose the metainfo's piece hash.
//!
//! Every piece a peer receives is hashed before it is written or re-announced, so the piece
//! hash sits on the receive path of every agent. This compares the candidates on this machine
//! for the piece lengths the default policy uses, with SHA-256 (which the whole-blob digest needs
//! anyway) as the baseline.
//!
//! `cargo run --release -p kraken-bench --bin piece_hash`

use std::hint::black_box;
use std::time::Duration;

use clap::Parser;
use kraken_bench::{best_throughput, mb_per_sec};
use kraken_core::PieceHashAlgorithm;

#[derive(Parser, Debug)]
struct Args {
    /// Seconds spent per measurement.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
}

fn main() {
    let args = Args::parse();
    let min_time = Duration::from_secs_f64(args.seconds);
    println!(
        "piece hash throughput, one core, best of runs over {:.1}s",
        args.seconds
    );
    println!(
        "{:>10}  {:>12}  {:>12}  {:>14}",
        "piece", "sha256", "blake3", "blake3/sha256"
    );
    for piece_length in [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20] {
        let data: Vec<u8> = (0..piece_length)
            .map(|i: usize| (i * 31 % 251) as u8)
            .collect();
        let rate = |algorithm: PieceHashAlgorithm| {
            best_throughput(piece_length as u64, min_time, || {
                black_box(algorithm.hash(black_box(&data)));
            })
        };
        let sha = rate(PieceHashAlgorithm::Sha256);
        let blake = rate(PieceHashAlgorithm::Blake3);
        println!(
            "{:>10}  {:>12}  {:>12}  {:>13.2}x",
            format!("{} KiB", piece_length >> 10),
            mb_per_sec(sha),
            mb_per_sec(blake),
            blake / sha
        );
    }
}

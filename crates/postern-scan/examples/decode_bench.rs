//! What reading a compressed request body as it streams costs: [`StreamDecoder`] against the
//! codings' own decoders (the floor: flate2's, brotli's and zstd's readers, decoding the whole
//! body at once into memory), on the labelled corpus's JSON bodies joined into bodies of
//! `--body-kib` KiB (default 256), compressed as clients send them: gzip (level 6), deflate
//! (zlib, level 6), br (quality 4, window 22 bits: what `sentry-sdk` sends) and zstd (level 3,
//! the library's default). The stream is
//! fed in 16 KiB pieces, as frames come, with a callback that only counts what it is handed.
//!
//! `cargo run --release -p postern-scan --example decode_bench -- [megabytes] [--body-kib N]`
//! (default 64 MB of decoded output per coding). MB/s is decoded bytes over the thread's CPU
//! time (`CLOCK_THREAD_CPUTIME_ID`), best of five passes after a warm-up, both sides measured
//! alternately in one run; the ratio is the figure to read on a shared machine. 1 MB = 10^6
//! bytes.

#[path = "../tests/support/corpus.rs"]
mod corpus;
#[path = "support/cpu_time.rs"]
mod cpu_time;
use cpu_time::thread_cpu_seconds;

use std::io::{Read as _, Write as _};

use postern_scan::{Coding, StreamDecoder};

/// The size of a frame of the caller's body.
const PIECE: usize = 16 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let megabytes: usize = args.first().and_then(|arg| arg.parse().ok()).unwrap_or(64);
    let body_kib: usize = args
        .iter()
        .position(|arg| arg == "--body-kib")
        .and_then(|at| args.get(at + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(256);
    let body = json_body(body_kib * 1024);
    let passes = (megabytes * 1_000_000).div_ceil(body.len()).max(1);
    println!(
        "bodies of {} bytes decoded, {passes} per pass, pieces of {PIECE} bytes",
        body.len()
    );
    println!(
        "{:<8} {:>11} {:>16} {:>16} {:>7}",
        "coding", "compressed", "floor MB/s", "stream MB/s", "ratio"
    );
    for (name, coding) in [
        ("gzip", Coding::Gzip),
        ("deflate", Coding::Deflate),
        ("br", Coding::Brotli),
        ("zstd", Coding::Zstd),
    ] {
        let compressed = compress(coding, &body);
        let floor = || {
            for _ in 0..passes {
                let decoded = floor_decode(coding, &compressed);
                assert_eq!(decoded.len(), body.len());
            }
        };
        let stream = || {
            for _ in 0..passes {
                let mut handed = 0;
                let mut count = |_reading: usize, piece: &[u8]| handed += piece.len();
                let mut decoder = StreamDecoder::new(coding, usize::MAX);
                for piece in compressed.chunks(PIECE) {
                    decoder.feed(piece, &mut count).unwrap();
                }
                decoder.finish(&mut count).unwrap();
                assert_eq!(handed, body.len());
            }
        };
        // Warm-up, then the best of five, the two alternating.
        floor();
        stream();
        let (mut best_floor, mut best_stream) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            best_floor = best_floor.min(cpu_seconds(floor));
            best_stream = best_stream.min(cpu_seconds(stream));
        }
        let decoded = (passes * body.len()) as f64 / 1e6;
        println!(
            "{name:<8} {:>10.1}% {:>16.0} {:>16.0} {:>6.2}×",
            compressed.len() as f64 * 100.0 / body.len() as f64,
            decoded / best_floor,
            decoded / best_stream,
            best_floor / best_stream,
        );
    }
}

/// The corpus's JSON bodies joined until `size` bytes.
fn json_body(size: usize) -> Vec<u8> {
    let rng = corpus::Rng::new(2024);
    let mut body = Vec::with_capacity(size + 4096);
    let mut index = 0;
    while body.len() < size {
        body.extend_from_slice(
            corpus::sample(
                &rng,
                corpus::JSON_FAMILIES[index % corpus::JSON_FAMILIES.len()],
            )
            .body
            .as_bytes(),
        );
        body.push(b'\n');
        index += 1;
    }
    body.truncate(size);
    body
}

fn compress(coding: Coding, body: &[u8]) -> Vec<u8> {
    match coding {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        Coding::Brotli => {
            let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, 4, 22);
            e.write_all(body).unwrap();
            e.into_inner()
        }
        Coding::Zstd => zstd::bulk::compress(body, 3).unwrap(),
    }
}

/// The coding's own decoder, the whole body at once.
fn floor_decode(coding: Coding, compressed: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        Coding::Gzip => flate2::read::MultiGzDecoder::new(compressed).read_to_end(&mut out),
        Coding::Deflate => flate2::read::ZlibDecoder::new(compressed).read_to_end(&mut out),
        Coding::Brotli => brotli::Decompressor::new(compressed, 4096).read_to_end(&mut out),
        Coding::Zstd => zstd::stream::read::Decoder::new(compressed)
            .and_then(|mut decoder| decoder.read_to_end(&mut out)),
    }
    .unwrap();
    out
}

/// The calling thread's CPU seconds spent in `work`.
fn cpu_seconds(work: impl Fn()) -> f64 {
    let start = thread_cpu_seconds();
    work();
    thread_cpu_seconds() - start
}

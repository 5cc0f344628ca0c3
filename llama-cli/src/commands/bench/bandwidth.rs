//! `llama-cli bench --bandwidth`: how fast this machine streams memory to the cores, the
//! ceiling of a decoded token, which reads every weight once.
//!
//! A buffer of at least four times the last-level cache (so that the passes read memory,
//! not the cache) is summed by the command's thread pool, each thread its own contiguous
//! share, as a decoding product splits a weight's rows. The best of several passes is
//! reported: drift and neighbours only ever slow a pass down.

use std::time::Instant;

use rayon::prelude::*;

/// The smallest buffer streamed, whatever the cache (MiB).
const MIN_BUFFER_MIB: usize = 256;
/// Timed passes over the buffer (after one that faults its pages in).
const PASSES: usize = 7;

/// The streaming-read rate of the pool's threads, in GB/s (10⁹ bytes per second).
#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    pub buffer_mib: usize,
    pub threads: usize,
    pub gb_per_s: f64,
}

/// Streams a buffer of at least four times the last-level cache with rayon's current pool.
pub fn measure() -> Bandwidth {
    let buffer_mib = (4 * last_level_cache_mib()).max(MIN_BUFFER_MIB);
    let words = buffer_mib * 1024 * 1024 / 8;
    // Distinct values, so that no page is shared zero memory.
    let buffer: Vec<u64> = (0..words as u64).collect();
    let threads = rayon::current_num_threads();
    let chunk = words.div_ceil(threads);
    let mut best = f64::INFINITY;
    let mut checksum = 0u64;
    for _ in 0..=PASSES {
        let start = Instant::now();
        checksum ^= buffer
            .par_chunks(chunk)
            .map(sum_words)
            .reduce(|| 0, u64::wrapping_add);
        best = best.min(start.elapsed().as_secs_f64());
    }
    // The checksum is used, so no pass can be optimised away.
    std::hint::black_box(checksum);
    Bandwidth {
        buffer_mib,
        threads,
        gb_per_s: (words * 8) as f64 / best / 1e9,
    }
}

/// The wrapping sum of `words`, in eight independent lanes so that the compiler vectorises
/// it and the loop is bound by loads, not by one add chain.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut blocks = words.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &w) in lanes.iter_mut().zip(block) {
            *lane = lane.wrapping_add(w);
        }
    }
    let tail = blocks
        .remainder()
        .iter()
        .fold(0u64, |a, &w| a.wrapping_add(w));
    lanes.iter().fold(tail, |a, &w| a.wrapping_add(w))
}

/// The largest cache of cpu0 in MiB, from sysfs (32 if unknown).
fn last_level_cache_mib() -> usize {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("size")).ok())
        .filter_map(|size| parse_cache_size(size.trim()))
        .max()
        .unwrap_or(32 * 1024 * 1024)
        .div_ceil(1024 * 1024)
}

/// Bytes of a sysfs cache size such as `32768K` or `2M`.
fn parse_cache_size(size: &str) -> Option<usize> {
    let (digits, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
    let n: usize = digits.parse().ok()?;
    match unit {
        "K" => n.checked_mul(1024),
        "M" => n.checked_mul(1024 * 1024),
        "G" => n.checked_mul(1024 * 1024 * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_word_once() {
        let words: Vec<u64> = (1..=1001).collect();
        assert_eq!(sum_words(&words), 1001 * 1002 / 2);
        assert_eq!(sum_words(&[u64::MAX, 2]), 1);
    }

    #[test]
    fn reads_sysfs_cache_sizes() {
        assert_eq!(parse_cache_size("32768K"), Some(32 << 20));
        assert_eq!(parse_cache_size("2M"), Some(2 << 20));
        assert_eq!(parse_cache_size("1G"), Some(1 << 30));
        assert_eq!(parse_cache_size("512"), None);
        assert_eq!(parse_cache_size("12Q"), None);
    }
}

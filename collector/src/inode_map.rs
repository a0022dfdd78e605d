//! Maps and sets keyed by inode. The daemon looks inodes up several times per kernel event
//! (open files, dirty set, tracker); with the standard library's SipHash those lookups
//! were a quarter of its CPU against a fast writer. Inode keys are not chosen by an
//! attacker the way network input is, so a multiply-and-mix hash does.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
};

use collector_common::InodeKey;

pub type InodeMap<V> = HashMap<InodeKey, V, BuildHasherDefault<InodeHasher>>;
pub type InodeSet = HashSet<InodeKey, BuildHasherDefault<InodeHasher>>;

#[derive(Default, Clone, Copy)]
pub struct InodeHasher(u64);

impl InodeHasher {
    fn mix(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for InodeHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }
    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits and a tag from the high ones: spread
        // every input bit over both.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_inodes_spread_over_buckets() {
        let hash = |k: InodeKey| {
            let mut h = InodeHasher::default();
            std::hash::Hash::hash(&k, &mut h);
            h.finish()
        };
        // Consecutive inode numbers (files created one after another) on two devices.
        let mut buckets = [0u32; 64];
        for dev in [0xfe00001, 0x800003] {
            for ino in 1000..5096u64 {
                buckets[(hash(InodeKey::new(dev, ino)) & 63) as usize] += 1;
            }
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*min > 80 && *max < 180, "uneven: {min}..{max} per bucket, 128 expected");
        let mut set = InodeSet::default();
        set.insert(InodeKey::new(1, 2));
        assert!(set.contains(&InodeKey::new(1, 2)) && !set.contains(&InodeKey::new(2, 1)));
    }
}

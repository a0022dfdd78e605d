//! The KPL's aggregated record: many records in one Kinesis record, as the Kinesis Producer
//! Library writes them and the KCL, AWS's deaggregation libraries (Lambda, Python, Node,
//! Java, Go) and Firehose reading from a stream unpack them. On the wire: the magic bytes,
//! a protobuf `AggregatedRecord`, and the MD5 of the protobuf bytes.
//!
//! ```proto
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! ```
//!
//! The collector puts one file's records in an aggregated record, under that file's key,
//! which is also the Kinesis record's: the key table holds one key and every record names
//! it. (A consumer that checks each record's key against its shard, as the KCL does after
//! a reshard, then keeps them all.)

use md5::{Digest, Md5};

pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_BYTES: usize = 16;
/// Field 1 (partition_key_table) and field 3 (records) of AggregatedRecord, length-delimited.
const KEY_TABLE_TAG: u8 = 1 << 3 | 2;
const RECORDS_TAG: u8 = 3 << 3 | 2;
/// Record's field 1 (partition_key_index, a varint) holding index 0.
const KEY_INDEX_ZERO: [u8; 2] = [1 << 3, 0];
/// Record's field 3 (data), length-delimited.
const DATA_TAG: u8 = 3 << 3 | 2;

/// An aggregated record being filled.
pub struct Aggregated {
    bytes: Vec<u8>,
}

impl Aggregated {
    /// An empty one under `key`, with room for `capacity` bytes.
    pub fn new(key: &str, capacity: usize) -> Aggregated {
        let mut bytes = Vec::with_capacity(capacity);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(KEY_TABLE_TAG);
        put_varint(&mut bytes, key.len() as u64);
        bytes.extend_from_slice(key.as_bytes());
        Aggregated { bytes }
    }

    /// Its size once finished, with a record of `data_len` bytes added.
    pub fn size_with(&self, data_len: usize) -> usize {
        self.bytes.len() + record_bytes(data_len) + DIGEST_BYTES
    }

    pub fn push(&mut self, data: &[u8]) {
        let inner = KEY_INDEX_ZERO.len() + 1 + varint_len(data.len() as u64) + data.len();
        self.bytes.push(RECORDS_TAG);
        put_varint(&mut self.bytes, inner as u64);
        self.bytes.extend_from_slice(&KEY_INDEX_ZERO);
        self.bytes.push(DATA_TAG);
        put_varint(&mut self.bytes, data.len() as u64);
        self.bytes.extend_from_slice(data);
    }

    /// The record's data: the magic, the protobuf, and the protobuf's MD5.
    pub fn finish(mut self) -> Vec<u8> {
        let digest = Md5::digest(&self.bytes[MAGIC.len()..]);
        self.bytes.extend_from_slice(&digest);
        self.bytes
    }
}

/// What a record of `data_len` bytes takes in an AggregatedRecord: its tag and length, and
/// the Record message (key index, data tag and length, data).
fn record_bytes(data_len: usize) -> usize {
    let inner = KEY_INDEX_ZERO.len() + 1 + varint_len(data_len as u64) + data_len;
    1 + varint_len(inner as u64) + inner
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_records_under_one_key_are_laid_out_as_the_kpl_does() {
        let mut a = Aggregated::new("k", 64);
        a.push(b"ab");
        a.push(b"");
        let size = a.size_with(0);
        let bytes = a.finish();
        let protobuf: &[u8] = &[
            0x0A, 1, b'k', // partition_key_table: ["k"]
            0x1A, 6, 0x08, 0, 0x1A, 2, b'a', b'b', // records[0]: key 0, data "ab"
            0x1A, 4, 0x08, 0, 0x1A, 0, // records[1]: key 0, data ""
        ];
        assert_eq!(&bytes[..4], &MAGIC);
        assert_eq!(&bytes[4..bytes.len() - 16], protobuf);
        assert_eq!(&bytes[bytes.len() - 16..], Md5::digest(protobuf).as_slice());
        assert_eq!(size, bytes.len() + record_bytes(0), "size_with counts what a push adds");
    }

    #[test]
    fn sizes_are_what_is_written_across_varint_widths() {
        for len in [0, 1, 120, 121, 122, 127, 128, 16_380, 16_384, 300_000] {
            let mut a = Aggregated::new("dev-ino", 0);
            let expected = a.size_with(len);
            a.push(&vec![b'x'; len]);
            assert_eq!(a.finish().len(), expected, "data of {len} bytes");
        }
        assert_eq!((varint_len(0), varint_len(127), varint_len(128), varint_len(u64::MAX)), (1, 1, 2, 10));
    }
}

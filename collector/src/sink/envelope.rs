//! A record wrapped with where it came from, as JSON: `host, flow, path, dev, ino, offset`
//! and `data` (or `data_base64` when the bytes are not UTF-8). The file sink's json format
//! and the Kinesis sinks' `envelope = "json"`: consumers can drop transport duplicates by
//! `(host, dev, ino, offset)`.

use serde_json::{Value, json};

use super::Outgoing;
use crate::watch::user_dev;

/// `data` is the record's bytes (possibly cut shorter than `r.data` to fit a limit).
pub fn json(host: &str, r: &Outgoing<'_>, data: &[u8]) -> Value {
    let mut v = json!({
        "host": host, "flow": r.flow, "path": r.path.to_string_lossy(),
        "dev": user_dev(r.inode.dev), "ino": r.inode.ino, "offset": r.offset,
    });
    match std::str::from_utf8(data) {
        Ok(text) => v["data"] = text.into(),
        Err(_) => v["data_base64"] = base64(data).into(),
    }
    v
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}

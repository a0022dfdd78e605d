//! A record wrapped with where it came from, as JSON: `host, flow, path, dev, ino, offset`,
//! the writer's `pid` and `comm` when the kernel reported them (the process that last wrote
//! the file before the record was read), and `data` (or `data_base64` when the bytes are
//! not UTF-8). The file sink's json format
//! and the Kinesis sinks' `envelope = "json"`: consumers can drop transport duplicates by
//! `(host, dev, ino, offset)`.

use std::io::Write as _;

use super::{Outgoing, Source};
use crate::devices::user_dev;

/// The fields a batch's records share (they come from one file, read at once): escaped
/// once per batch instead of once per record. Writing the rest field by field: building a
/// `serde_json::Value` per record cost more than reading the file.
pub struct Head {
    /// `{"host":..,"flow":..,"path":..,"dev":..,"ino":..,"offset":`
    origin: Vec<u8>,
    /// `,"pid":..,"comm":..` or nothing.
    writer: Vec<u8>,
}

impl Head {
    pub fn new(host: &str, o: &Source<'_>) -> Head {
        let mut origin = b"{\"host\":".to_vec();
        string(&mut origin, host);
        origin.extend_from_slice(b",\"flow\":");
        string(&mut origin, o.flow);
        origin.extend_from_slice(b",\"path\":");
        string(&mut origin, &o.path.to_string_lossy());
        let _ = write!(origin, ",\"dev\":{},\"ino\":{},\"offset\":", user_dev(o.inode.dev), o.inode.ino);
        let mut writer = Vec::new();
        if let Some(w) = o.writer {
            let _ = write!(writer, ",\"pid\":{},\"comm\":", w.pid);
            string(&mut writer, &w.comm);
        }
        Head { origin, writer }
    }

    /// Appends the record as one JSON object to `out`. `data` is the record's bytes
    /// (possibly cut shorter than `r.data` to fit a limit).
    pub fn write(&self, out: &mut Vec<u8>, r: &Outgoing<'_>, data: &[u8]) {
        out.extend_from_slice(&self.origin);
        number(out, r.offset);
        out.extend_from_slice(&self.writer);
        match std::str::from_utf8(data) {
            // Whole: a JSON object cut to a limit is no longer one, and goes as a string.
            Ok(object) if r.json && data.len() == r.data.len() => {
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(object.as_bytes());
            }
            Ok(text) => {
                out.extend_from_slice(b",\"data\":");
                string(out, text);
            }
            Err(_) => {
                out.extend_from_slice(b",\"data_base64\":\"");
                out.extend_from_slice(base64(data).as_bytes());
                out.push(b'"');
            }
        }
        out.push(b'}');
    }
}

/// The record as an AWS sink sends it, raw or wrapped in `head`'s envelope, in at most
/// `limit` bytes. Only an envelope can grow a record past the limit (max_record_bytes keeps
/// raw records under it): then the record's bytes are cut until the envelope fits, counted
/// in `cut`, and logged.
#[cfg_attr(not(feature = "kinesis"), allow(dead_code))]
pub fn encode_within(
    origin: &Source<'_>,
    head: Option<&Head>,
    r: &Outgoing<'_>,
    limit: usize,
    cut: &mut u64,
) -> Vec<u8> {
    let encode = |keep: usize| match head {
        Some(head) => {
            let mut out = Vec::with_capacity(keep + 160);
            head.write(&mut out, r, &r.data[..keep]);
            out
        }
        None => r.data[..keep].to_vec(),
    };
    let mut data = encode(r.data.len());
    if data.len() > limit {
        let mut keep = r.data.len();
        while data.len() > limit && keep > 0 {
            keep = keep.saturating_sub(data.len() - limit + 64);
            data = encode(keep);
        }
        *cut += 1;
        tracing::warn!(path = %origin.path.display(), offset = r.offset, limit, "record cut to fit the destination's record limit with its envelope");
    }
    data
}

/// A JSON string literal, escaped as serde_json escapes (`"`, `\\`, and control bytes
/// below 0x20; nothing else). The record's text is most of what the file sink writes, and
/// a byte-at-a-time escape loop was a fifth of its CPU: eight bytes are tested at once and
/// runs without anything to escape are copied whole.
fn string(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        let end = (i + 8).min(b.len());
        let word = match b.get(i..i + 8) {
            Some(word) => u64::from_le_bytes(word.try_into().expect("8 bytes")),
            None => {
                // The last few bytes, padded with spaces (nothing to escape).
                let mut lane = [b' '; 8];
                lane[..end - i].copy_from_slice(&b[i..end]);
                u64::from_le_bytes(lane)
            }
        };
        if needs_escape(word) {
            for (j, &c) in b.iter().enumerate().take(end).skip(i) {
                if c < 0x20 || c == b'"' || c == b'\\' {
                    out.extend_from_slice(&b[run..j]);
                    escape(out, c);
                    run = j + 1;
                }
            }
        }
        i = end;
    }
    out.extend_from_slice(&b[run..]);
    out.push(b'"');
}

/// Whether any of the eight bytes is below 0x20, `"` or `\\` (bit tricks that test every
/// byte lane of the word at once; exact as a yes/no answer).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below_0x20 = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    below_0x20 | zero_in(w ^ (ONES * u64::from(b'"'))) | zero_in(w ^ (ONES * u64::from(b'\\'))) != 0
}

fn escape(out: &mut Vec<u8>, c: u8) {
    let short = match c {
        b'"' => b'"',
        b'\\' => b'\\',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x08 => b'b',
        0x0c => b'f',
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

/// A decimal number (the per-record offset), without the formatting machinery.
fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
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
    fn records_are_json_with_their_origin() {
        let path = std::path::Path::new("/var/log/a \"b\".log");
        let writer = crate::sink::Writer { pid: 1234, comm: "nginx \"w\"".into(), ..Default::default() };
        let origin =
            Source { flow: "app", path, inode: collector_common::InodeKey::new(0xfe00001, 42), writer: Some(&writer) };
        let r = Outgoing { offset: 7, data: b"", json: false };
        let mut out = Vec::new();
        Head::new("h", &origin).write(&mut out, &r, b"line \"quoted\"\t\x01");
        Head::new("h", &Source { writer: None, ..origin }).write(&mut out, &r, b"caf\xe9");
        let object = br#"{"status":"200"}"#;
        Head::new("h", &origin).write(&mut out, &Outgoing { json: true, data: object, ..r }, object);
        let text = String::from_utf8(out).unwrap();
        let mut objects = serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>();
        let (a, b, c) =
            (objects.next().unwrap().unwrap(), objects.next().unwrap().unwrap(), objects.next().unwrap().unwrap());
        assert_eq!(c["data"]["status"], "200", "a transform's JSON is embedded as an object");
        assert_eq!(a["data"], "line \"quoted\"\t\u{1}");
        assert_eq!(
            (a["host"].as_str(), a["flow"].as_str(), a["path"].as_str()),
            (Some("h"), Some("app"), path.to_str())
        );
        assert_eq!((a["ino"].as_u64(), a["offset"].as_u64()), (Some(42), Some(7)));
        assert_eq!((a["pid"].as_u64(), a["comm"].as_str()), (Some(1234), Some("nginx \"w\"")));
        assert_eq!(b["data_base64"], "Y2Fm6Q==");
        assert!(b.get("data").is_none() && b.get("pid").is_none() && b.get("comm").is_none());
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_does() {
        let mut samples: Vec<String> = (0u8..128).map(|c| format!("ab{}cdefghij", c as char)).collect();
        // Each byte lane of a word, beside multi-byte UTF-8 (bytes >= 0x80).
        for at in 0..17 {
            for c in ['\u{0}', '\u{1f}', ' ', '"', '\\', '\u{7f}', 'é', '!', '#', '[', ']'] {
                let mut t: String = "x".repeat(17) + "ééé";
                t.insert(at, c);
                samples.push(t);
            }
        }
        samples.extend(
            [
                "",
                "plain text longer than one eight-byte word, nothing to escape at all",
                "\"quoted\" and \\back\\slashes\\ at word edges\"",
                "tabs\tand\nnewlines\r\u{1}\u{1f}\u{7f} and ünïcödé — 日本語 🦀",
                "1234567\"",
                "12345678\"",
                "\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}",
            ]
            .map(str::to_owned),
        );
        for s in &samples {
            let mut ours = Vec::new();
            string(&mut ours, s);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numbers_are_decimal() {
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            number(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}

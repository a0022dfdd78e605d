//! A record wrapped with where it came from, as JSON: `host, flow, path, dev, ino, offset`,
//! the writer's `pid` and `comm` when the kernel reported them (the process that last wrote
//! the file before the record was read), and `data` (or `data_base64` when the bytes are
//! not UTF-8). The file sink's json format
//! and the Kinesis sinks' `envelope = "json"`: consumers can drop transport duplicates by
//! `(host, dev, ino, offset)`.

use std::io::Write as _;

use super::Outgoing;
use crate::watch::user_dev;

/// Appends the record as one JSON object to `out`. `data` is the record's bytes (possibly
/// cut shorter than `r.data` to fit a limit). Written field by field: building a
/// `serde_json::Value` per record cost more than reading the file.
pub fn write_json(out: &mut Vec<u8>, host: &str, r: &Outgoing<'_>, data: &[u8]) {
    Head::new(host, r).write(out, r, data);
}

/// The fields a batch's records share (they come from one file, read at once): escaped
/// once per batch instead of once per record.
pub struct Head {
    /// `{"host":..,"flow":..,"path":..,"dev":..,"ino":..,"offset":`
    origin: Vec<u8>,
    /// `,"pid":..,"comm":..` or nothing.
    writer: Vec<u8>,
    inode: collector_common::InodeKey,
    writer_of: Option<(u32, String)>,
}

impl Head {
    pub fn new(host: &str, r: &Outgoing<'_>) -> Head {
        let mut origin = b"{\"host\":".to_vec();
        string(&mut origin, host);
        origin.extend_from_slice(b",\"flow\":");
        string(&mut origin, r.flow);
        origin.extend_from_slice(b",\"path\":");
        string(&mut origin, &r.path.to_string_lossy());
        let _ = write!(origin, ",\"dev\":{},\"ino\":{},\"offset\":", user_dev(r.inode.dev), r.inode.ino);
        let mut writer = Vec::new();
        if let Some(w) = r.writer {
            let _ = write!(writer, ",\"pid\":{},\"comm\":", w.pid);
            string(&mut writer, &w.comm);
        }
        Head { origin, writer, inode: r.inode, writer_of: r.writer.map(|w| (w.pid, w.comm.clone())) }
    }

    /// Whether `r` shares these fields (same file and writer; the flow and host go with the file).
    pub fn fits(&self, r: &Outgoing<'_>) -> bool {
        self.inode == r.inode
            && self.writer_of.as_ref().map(|(p, c)| (*p, c.as_str())) == r.writer.map(|w| (w.pid, w.comm.as_str()))
    }

    pub fn write(&self, out: &mut Vec<u8>, r: &Outgoing<'_>, data: &[u8]) {
        out.extend_from_slice(&self.origin);
        let _ = write!(out, "{}", r.offset);
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

/// The record as an AWS sink sends it, raw or wrapped, in at most `limit` bytes. Only an
/// envelope can grow a record past the limit (max_record_bytes keeps raw records under it):
/// then the record's bytes are cut until the envelope fits, counted in `cut`, and logged.
#[cfg_attr(not(feature = "kinesis"), allow(dead_code))]
pub fn encode_within(r: &Outgoing<'_>, host: &str, wrap: bool, limit: usize, cut: &mut u64) -> Vec<u8> {
    let encode = |keep: usize| {
        if wrap {
            let mut out = Vec::with_capacity(keep + 160);
            write_json(&mut out, host, r, &r.data[..keep]);
            out
        } else {
            r.data[..keep].to_vec()
        }
    };
    let mut data = encode(r.data.len());
    if data.len() > limit {
        let mut keep = r.data.len();
        while data.len() > limit && keep > 0 {
            keep = keep.saturating_sub(data.len() - limit + 64);
            data = encode(keep);
        }
        *cut += 1;
        tracing::warn!(path = %r.path.display(), offset = r.offset, limit, "record cut to fit the destination's record limit with its envelope");
    }
    data
}

/// A JSON string literal (serde_json's escaping).
fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
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
        let r = Outgoing {
            flow: "app",
            path,
            inode: collector_common::InodeKey::new(0xfe00001, 42),
            offset: 7,
            data: b"",
            writer: Some(&writer),
            json: false,
        };
        let mut out = Vec::new();
        write_json(&mut out, "h", &r, b"line \"quoted\"\t\x01");
        write_json(&mut out, "h", &Outgoing { writer: None, ..r }, b"caf\xe9");
        let object = br#"{"status":"200"}"#;
        write_json(&mut out, "h", &Outgoing { json: true, data: object, ..r }, object);
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
}

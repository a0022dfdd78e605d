//! The file sink: appends records to a local file, fsynced per batch. For dry runs, and
//! what the tests read. `json` lines carry `host, flow, path, dev, ino, offset, data`
//! (`data_base64` instead of `data` when the record is not UTF-8); `raw` writes each record
//! and a newline.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::Path,
};

use anyhow::Context as _;
use serde_json::json;

use super::{Outgoing, Sink};
use crate::{config::FileFormat, watch::user_dev};

pub struct FileSink {
    file: File,
    format: FileFormat,
    host: String,
    buffer: Vec<u8>,
}

impl FileSink {
    pub fn open(path: &Path, format: FileFormat, host: &str) -> anyhow::Result<FileSink> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("opening file sink {}", path.display()))?;
        Ok(FileSink { file, format, host: host.to_owned(), buffer: Vec::new() })
    }
}

impl Sink for FileSink {
    fn deliver(&mut self, batch: &[Outgoing<'_>]) -> anyhow::Result<()> {
        self.buffer.clear();
        for r in batch {
            match self.format {
                FileFormat::Raw => self.buffer.extend_from_slice(r.data),
                FileFormat::Json => {
                    let mut line = json!({
                        "host": self.host, "flow": r.flow, "path": r.path.to_string_lossy(),
                        "dev": user_dev(r.inode.dev), "ino": r.inode.ino, "offset": r.offset,
                    });
                    match std::str::from_utf8(r.data) {
                        Ok(text) => line["data"] = text.into(),
                        Err(_) => line["data_base64"] = base64(r.data).into(),
                    }
                    serde_json::to_writer(&mut self.buffer, &line)?;
                }
            }
            self.buffer.push(b'\n');
        }
        self.file.write_all(&self.buffer).context("writing to the file sink")?;
        self.file.sync_data().context("fsync of the file sink")?;
        Ok(())
    }
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

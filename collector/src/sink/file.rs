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

use super::{Batch, Refused, Sink, envelope};
use crate::config::FileFormat;

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
    fn deliver(&mut self, batch: &Batch<'_>) -> Result<(), Refused> {
        self.buffer.clear();
        match self.format {
            FileFormat::Raw => {
                for r in batch.records() {
                    self.buffer.extend_from_slice(r.data);
                    self.buffer.push(b'\n');
                }
            }
            FileFormat::Json => {
                let head = envelope::Head::new(&self.host, &batch.origin);
                for r in batch.records() {
                    head.write(&mut self.buffer, &r, r.data);
                    self.buffer.push(b'\n');
                }
            }
        }
        self.file.write_all(&self.buffer).context("writing to the file sink")?;
        self.file.sync_data().context("fsync of the file sink")?;
        Ok(())
    }
}

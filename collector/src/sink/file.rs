//! The file sink: appends records to a local file, fsynced before a checkpoint passes them
//! (`make_durable`). For dry runs, and what the tests read. `json` lines carry `host, flow,
//! path, dev, ino, offset, data` (`data_base64` instead of `data` when the record is not
//! UTF-8); `raw` writes each record and a newline.
//!
//! Most of this sink's time is the kernel copying what it writes into the page cache (a
//! profile of the ingest benchmark's json run: 56% in `copy_folio_from_iter_atomic`). A large
//! batch is therefore encoded in pieces, each written on a second thread while the next is
//! encoded: the copy and the encoding overlap, and a piece is still in the CPU's cache when
//! the kernel copies it.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::mpsc,
};

use anyhow::Context as _;

use super::{Batch, Outgoing, Refused, Sink, envelope};
use crate::config::FileFormat;

/// Bytes of one piece.
const PIECE_BYTES: usize = 256 << 10;
/// Pieces in flight between the encoder and the writer.
const PIECES: usize = 3;

pub struct FileSink {
    file: File,
    /// Named in errors.
    path: PathBuf,
    format: FileFormat,
    host: String,
    /// Piece buffers, kept from one batch to the next.
    pieces: Vec<Piece>,
    /// Written since the last fsync.
    unsynced: bool,
}

/// Encoded records: where each ends in `bytes`, and the batch index of the first.
#[derive(Default)]
struct Piece {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    first_record: usize,
}

impl Piece {
    fn push(&mut self, head: Option<&envelope::Head>, r: &Outgoing<'_>) {
        encode(&mut self.bytes, head, r);
        self.ends.push(self.bytes.len());
    }
}

impl FileSink {
    pub fn open(path: &Path, format: FileFormat, host: &str) -> anyhow::Result<FileSink> {
        let file = open_output(path)?;
        let cut =
            cut_torn_record(&file, path).with_context(|| format!("cutting a torn record off {}", path.display()))?;
        if cut > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = cut,
                "the file sink's output ended in a torn record (the collector was killed while writing it): cut it off; its records are sent again from their checkpoints"
            );
        }
        Ok(FileSink { file, path: path.to_owned(), format, host: host.to_owned(), pieces: Vec::new(), unsynced: false })
    }

    /// An empty piece buffer, from the pool when it has one.
    fn take_piece(&mut self) -> Piece {
        let mut piece = self
            .pieces
            .pop()
            .unwrap_or_else(|| Piece { bytes: Vec::with_capacity(PIECE_BYTES + 4096), ..Piece::default() });
        piece.bytes.clear();
        piece.ends.clear();
        piece
    }

    /// One file's records, in one piece or in several.
    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), Refused> {
        let head = (self.format == FileFormat::Json).then(|| envelope::Head::new(&self.host, &batch.origin));
        self.unsynced = true;
        // A json record is about twice its data.
        let encoded = batch.data_bytes(batch.len()) * if head.is_some() { 2 } else { 1 };
        if encoded < PIECE_BYTES as u64 {
            self.write_small(batch, head.as_ref())?;
        } else {
            self.write_pieces(batch, head.as_ref())?;
        }
        Ok(())
    }

    /// A batch that fits in one piece: encoded and written here.
    fn write_small(&mut self, batch: &Batch<'_>, head: Option<&envelope::Head>) -> Result<(), Refused> {
        let mut piece = self.take_piece();
        piece.first_record = 0;
        for r in batch.records() {
            piece.push(head, &r);
        }
        let written = write_piece(&self.file, &piece);
        self.pieces.push(piece);
        written.map_err(|e| self.refused(e))
    }

    /// A batch of several pieces: encoded here, written by a second thread meanwhile.
    fn write_pieces(&mut self, batch: &Batch<'_>, head: Option<&envelope::Head>) -> Result<(), Refused> {
        let (to_write, filled) = mpsc::sync_channel::<Piece>(PIECES);
        let (to_fill, free) = mpsc::channel::<Piece>();
        for _ in 0..PIECES {
            let _ = to_fill.send(self.take_piece());
        }
        let file = &self.file;
        let written = std::thread::scope(|s| {
            let writer = s.spawn(move || write_in_order(file, filled, to_fill));
            let mut piece = free.recv().unwrap_or_default();
            piece.first_record = 0;
            for (i, r) in batch.records().enumerate() {
                piece.push(head, &r);
                if piece.bytes.len() >= PIECE_BYTES {
                    // The writer stopped on an error: it says how far it got.
                    if to_write.send(std::mem::take(&mut piece)).is_err() {
                        break;
                    }
                    piece = free.recv().unwrap_or_default();
                    piece.bytes.clear();
                    piece.ends.clear();
                    piece.first_record = i + 1;
                }
            }
            if !piece.ends.is_empty() {
                let _ = to_write.send(piece);
            }
            drop(to_write);
            writer.join().expect("the file sink's writer thread")
        });
        self.pieces.extend(free.try_iter());
        written.map_err(|e| self.refused(e))
    }

    fn refused(&self, Failed { accepted, error }: Failed) -> Refused {
        let error = anyhow::Error::new(error).context(format!("writing to the file sink {}", self.path.display()));
        Refused { accepted, error, alone: false }
    }
}

/// The output, appended to: each write lands at the file's end as it is then, also after
/// another process truncated it (logrotate's copytruncate).
fn open_output(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening file sink {}", path.display()))
}

/// Cuts the output back to the end of its last whole record, and says how many bytes went.
/// A kill -9 during a write leaves part of a record (the kernel stops a write to a regular
/// file between pages once the process must die), and the records after a restart would
/// follow it on the same line. Nothing in the torn record was acknowledged: a checkpoint
/// passes records only after `make_durable`, which a torn write never reached. Json records
/// hold no raw newline, so the cut is exact; a raw multiline record's first lines may stay.
fn cut_torn_record(file: &File, path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt as _;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() || meta.len() == 0 {
        return Ok(0);
    }
    // The output is opened to append only.
    let reader = File::open(path)?;
    let mut end = meta.len();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let start = end.saturating_sub(chunk.len() as u64);
        let buf = &mut chunk[..(end - start) as usize];
        reader.read_exact_at(buf, start)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            let whole = start + i as u64 + 1;
            if whole < meta.len() {
                file.set_len(whole)?;
            }
            return Ok(meta.len() - whole);
        }
        if start == 0 {
            file.set_len(0)?;
            return Ok(meta.len());
        }
        end = start;
    }
}

/// A write that failed, and how many records of the batch are wholly in the file.
struct Failed {
    accepted: usize,
    error: std::io::Error,
}

/// One record and its newline.
fn encode(out: &mut Vec<u8>, head: Option<&envelope::Head>, r: &Outgoing<'_>) {
    match head {
        Some(head) => head.write(out, r, r.data),
        None => out.extend_from_slice(r.data),
    }
    out.push(b'\n');
}

/// Appends a piece. When a write fails (a full disk) after some of its bytes landed, the
/// file is cut back to the end of the last record written whole: it never holds a torn
/// record, and what it holds whole is counted as accepted (the daemon does not send it
/// again).
fn write_piece(mut file: &File, piece: &Piece) -> Result<(), Failed> {
    let mut done = 0;
    while done < piece.bytes.len() {
        let error = match file.write(&piece.bytes[done..]) {
            Ok(0) => std::io::ErrorKind::WriteZero.into(),
            Ok(n) => {
                done += n;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        let whole = piece.ends.partition_point(|&end| end <= done);
        let torn = done - whole.checked_sub(1).map_or(0, |last| piece.ends[last]);
        if torn > 0 {
            // O_APPEND: the file ends with what this call wrote (the sink is its only writer).
            let cut = file.metadata().and_then(|m| file.set_len(m.len().saturating_sub(torn as u64)));
            if let Err(e) = cut {
                let error = std::io::Error::new(e.kind(), format!("{error}; then cutting back a torn record: {e}"));
                return Err(Failed { accepted: piece.first_record + whole, error });
            }
        }
        return Err(Failed { accepted: piece.first_record + whole, error });
    }
    Ok(())
}

/// Writes the pieces in order, handing each buffer back; on a failure, says how many
/// records are wholly in the file.
fn write_in_order(file: &File, pieces: mpsc::Receiver<Piece>, done: mpsc::Sender<Piece>) -> Result<(), Failed> {
    for piece in pieces {
        write_piece(file, &piece)?;
        let _ = done.send(piece);
    }
    Ok(())
}

impl Sink for FileSink {
    /// One batch after the other; after a failure the rest are refused whole with it.
    fn deliver(&mut self, batches: &[Batch<'_>], _idle: &mut dyn FnMut()) -> Vec<Result<(), Refused>> {
        let mut out = Vec::with_capacity(batches.len());
        let mut failed: Option<String> = None;
        for batch in batches {
            out.push(match &failed {
                Some(e) => Err(Refused { accepted: 0, error: anyhow::anyhow!("{e}"), alone: false }),
                None => self.write_batch(batch),
            });
            if let Some(Err(e)) = out.last()
                && failed.is_none()
            {
                failed = Some(format!("{:#}", e.error));
            }
        }
        if failed.is_none() && !batches.is_empty() {
            // Starts writing to disk without waiting, so the fsync before the next
            // checkpoint has little left to wait for (a hint only: its errors, like ESPIPE
            // on a FIFO, leave that fsync to tell).
            // SAFETY: no memory is passed: only the descriptor `self.file` keeps open, and plain integers.
            unsafe { libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        }
        out
    }

    fn may_block(&self) -> bool {
        true
    }

    fn make_durable(&mut self) -> anyhow::Result<()> {
        if std::mem::take(&mut self.unsynced) {
            self.file.sync_data().with_context(|| format!("fsync of the file sink {}", self.path.display()))?;
        }
        Ok(())
    }

    fn reopen(&mut self) -> anyhow::Result<Option<String>> {
        self.file = open_output(&self.path)?;
        Ok(Some(self.path.display().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framer::{Framer, FramerConfig};

    /// `lines` lines of `n` digits each through a raw sink writing to `path`.
    fn deliver_lines(path: &Path, lines: usize, n: usize) -> (Vec<u8>, FileSink, Result<(), Refused>) {
        let mut sink = FileSink::open(path, FileFormat::Raw, "h").unwrap();
        let (input, result) = deliver_to(&mut sink, 0, lines, n);
        (input, sink, result)
    }

    /// Lines `tag-<i>` of `n` digits through `sink`.
    fn deliver_to(sink: &mut FileSink, tag: usize, lines: usize, n: usize) -> (Vec<u8>, Result<(), Refused>) {
        let input: Vec<u8> = (0..lines).flat_map(|i| format!("{tag}-{i:0n$}\n").into_bytes()).collect();
        let config = FramerConfig {
            multiline_start: None,
            multiline_flush: std::time::Duration::from_secs(1),
            skip_header_lines: 0,
            max_record_bytes: 1 << 20,
            truncated_terminator: Vec::new(),
        };
        let mut framer = Framer::new(config, 0);
        let mut framed = Default::default();
        framer.push(0, input.clone(), &mut framed);
        let origin = super::super::Source {
            flow: "f",
            path: Path::new("/x"),
            inode: collector_common::InodeKey::new(1, 2),
            writer: None,
        };
        let result = crate::sink::deliver_one(sink, &Batch::framed(origin, &framed));
        (input, result)
    }

    /// Lines through the sink, and what its file holds then.
    fn round_trip(lines: usize, n: usize) -> (Vec<u8>, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("file-sink-{}-{lines}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("out");
        let (input, mut sink, result) = deliver_lines(&path, lines, n);
        result.unwrap();
        sink.make_durable().unwrap();
        let got = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (input, got)
    }

    #[test]
    fn a_write_that_fails_refuses_the_batch_and_stops_the_writer() {
        // /dev/full: every write fails with ENOSPC; a batch of many pieces must still end.
        let (_, _, result) = deliver_lines(Path::new("/dev/full"), 60_000, 99);
        let refused = result.unwrap_err();
        assert_eq!(refused.accepted, 0);
        assert!(format!("{:#}", refused.error).contains("writing to the file sink"), "{:#}", refused.error);
    }

    #[test]
    fn a_batch_of_many_pieces_is_written_whole_and_in_order() {
        // ~6 MB: some 24 pieces through the writer thread.
        let (input, got) = round_trip(60_000, 99);
        assert!(input.len() > 20 * PIECE_BYTES);
        assert!(got == input, "{} bytes written of {}", got.len(), input.len());
    }

    #[test]
    fn batches_small_and_large_one_after_another_are_each_written_once() {
        let dir = std::env::temp_dir().join(format!("file-sink-mixed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("out");
        let mut sink = FileSink::open(&path, FileFormat::Raw, "h").unwrap();
        let mut want = Vec::new();
        // The pool's buffers go from one kind of batch to the other and back.
        for (round, lines) in [3, 60_000, 5, 40_000, 2].into_iter().enumerate() {
            let (input, result) = deliver_to(&mut sink, round, lines, 99);
            result.unwrap();
            want.extend_from_slice(&input);
        }
        let got = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(got == want, "{} bytes written, {} delivered", got.len(), want.len());
    }

    #[test]
    fn a_torn_record_at_the_end_of_the_output_is_cut_off_at_open() {
        let dir = std::env::temp_dir().join(format!("file-sink-torn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        // Whole records, then a torn one longer than one read back (64 KiB).
        let mut before = b"a\nb\n".to_vec();
        before.extend(std::iter::repeat_n(b'x', 100_000));
        std::fs::write(&path, &before).unwrap();
        let mut sink = FileSink::open(&path, FileFormat::Raw, "h").unwrap();
        let (input, result) = deliver_to(&mut sink, 0, 3, 4);
        result.unwrap();
        let mut want = b"a\nb\n".to_vec();
        want.extend_from_slice(&input);
        assert_eq!(String::from_utf8(std::fs::read(&path).unwrap()).unwrap(), String::from_utf8(want).unwrap());
        // Only a torn record: nothing stays.
        std::fs::write(&path, b"torn").unwrap();
        drop(FileSink::open(&path, FileFormat::Raw, "h").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        // Whole records: nothing is cut.
        std::fs::write(&path, b"a\n").unwrap();
        drop(FileSink::open(&path, FileFormat::Raw, "h").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"a\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_small_batch_is_written_whole() {
        let (input, got) = round_trip(10, 20);
        assert_eq!(got, input);
    }
}

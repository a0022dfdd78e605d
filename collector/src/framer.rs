//! Turns a file's bytes into records: lines (without their newline), joined into multiline
//! records when the flow says how a record starts, cut at the flow's size limit. Bytes stay
//! bytes (no UTF-8 requirement). A record knows the file range it came from, so an
//! acknowledged offset always ends on a record boundary.

use std::time::Duration;

use bytes::Bytes;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// File offset of the record's first byte.
    pub offset: u64,
    /// File offset just past the record, its newline included.
    pub end: u64,
    /// A slice of the chunk that was read when the line lies whole in it (no copy), else
    /// the bytes gathered across reads.
    pub data: Bytes,
    /// Cut at `max_record_bytes` (the rest up to the newline was dropped and counted).
    pub truncated: bool,
}

#[derive(Clone, Debug)]
pub struct FramerConfig {
    pub multiline_start: Option<regex_lite::Regex>,
    pub multiline_flush: Duration,
    pub skip_header_lines: u32,
    pub max_record_bytes: usize,
    pub truncated_terminator: Vec<u8>,
}

pub struct Framer {
    config: FramerConfig,
    /// Bytes of an unfinished line, starting at file offset `line_start`.
    line: Vec<u8>,
    line_start: u64,
    /// Bytes of the current line dropped past the size limit (they still count as read).
    line_dropped: u64,
    /// Multiline: the record being gathered, waiting for the next start line.
    held: Option<Held>,
    lines_seen: u64,
    /// Bytes dropped by the size limit.
    pub dropped_bytes: u64,
}

impl Framer {
    pub fn new(config: FramerConfig, offset: u64) -> Framer {
        Framer {
            config,
            line: Vec::new(),
            line_start: offset,
            line_dropped: 0,
            held: None,
            lines_seen: 0,
            dropped_bytes: 0,
        }
    }

    /// Where the next bytes must start: the end of what was pushed.
    pub fn next_offset(&self) -> u64 {
        self.line_start + self.line.len() as u64 + self.line_dropped
    }

    /// Start over at `offset` (after a truncation): unfinished data is discarded.
    pub fn reset(&mut self, offset: u64) {
        self.line.clear();
        self.line_start = offset;
        self.line_dropped = 0;
        self.held = None;
        if offset == 0 {
            self.lines_seen = 0;
        }
    }

    /// Bytes read from the file at `offset` (which must be `next_offset()`); returns the
    /// records they complete.
    pub fn push(&mut self, offset: u64, chunk: &Bytes, out: &mut Vec<Record>) {
        debug_assert_eq!(offset, self.next_offset());
        let mut start = 0;
        while start < chunk.len() {
            match memchr::memchr(b'\n', &chunk[start..]) {
                Some(i) => {
                    let end = start + i;
                    let whole = self.line.is_empty() && self.line_dropped == 0 && i <= self.config.max_record_bytes;
                    let data = if whole {
                        Some(chunk.slice(start..end))
                    } else {
                        self.extend_line(&chunk[start..end]);
                        None
                    };
                    self.finish_line(offset + end as u64 + 1, data, out);
                    start = end + 1;
                }
                None => {
                    self.extend_line(&chunk[start..]);
                    start = chunk.len();
                }
            }
        }
    }

    fn extend_line(&mut self, bytes: &[u8]) {
        let room = self.config.max_record_bytes.saturating_sub(self.line.len());
        let keep = room.min(bytes.len());
        self.line.extend_from_slice(&bytes[..keep]);
        let dropped = (bytes.len() - keep) as u64;
        self.line_dropped += dropped;
        self.dropped_bytes += dropped;
    }

    /// A newline ended the current line at `end` (just past the newline).
    /// A line ended at `end`: `whole` is its bytes when they lay in one chunk, else they
    /// are in `self.line`.
    fn finish_line(&mut self, end: u64, whole: Option<Bytes>, out: &mut Vec<Record>) {
        let truncated = std::mem::take(&mut self.line_dropped) > 0;
        let data = match whole {
            Some(data) => data,
            None => {
                let mut data = std::mem::take(&mut self.line);
                if truncated {
                    let keep = self.config.max_record_bytes.saturating_sub(self.config.truncated_terminator.len());
                    data.truncate(keep);
                    data.extend_from_slice(&self.config.truncated_terminator);
                }
                Bytes::from(data)
            }
        };
        let line = Record { offset: self.line_start, end, data, truncated };
        self.line_start = end;
        self.lines_seen += 1;
        if self.lines_seen <= u64::from(self.config.skip_header_lines) {
            return;
        }
        let Some(start) = &self.config.multiline_start else {
            out.push(line);
            return;
        };
        if start.is_match(&String::from_utf8_lossy(&line.data)) {
            out.extend(self.held.replace(Held::from(line)).map(Held::into_record));
        } else if let Some(held) = &mut self.held {
            if held.data.len() + 1 + line.data.len() <= self.config.max_record_bytes {
                held.data.push(b'\n');
                held.data.extend_from_slice(&line.data);
            } else {
                held.truncated = true;
                self.dropped_bytes += line.data.len() as u64 + 1;
            }
            held.end = line.end;
        } else {
            out.push(line);
        }
    }

    /// Everything held back, once nothing new has come for the flush timeout: the multiline
    /// record being gathered, then the final line that has no newline yet.
    pub fn flush(&mut self, out: &mut Vec<Record>) {
        out.extend(self.held.take().map(Held::into_record));
        if !self.line.is_empty() || self.line_dropped > 0 {
            let end = self.next_offset();
            let data = Bytes::from(std::mem::take(&mut self.line));
            let truncated = std::mem::take(&mut self.line_dropped) > 0;
            out.push(Record { offset: self.line_start, end, data, truncated });
            self.line_start = end;
        }
    }

    /// Whether something waits for more input or the flush timeout.
    pub fn holds(&self) -> bool {
        self.held.is_some() || !self.line.is_empty()
    }

    pub fn flush_after(&self) -> Duration {
        self.config.multiline_flush
    }

    /// Offset up to which every byte belongs to a record already returned.
    pub fn settled_offset(&self) -> u64 {
        self.held.as_ref().map_or(self.line_start, |h| h.offset)
    }
}

/// A multiline record being gathered: continuation lines are appended to it.
struct Held {
    offset: u64,
    end: u64,
    data: Vec<u8>,
    truncated: bool,
}

impl From<Record> for Held {
    fn from(r: Record) -> Held {
        Held { offset: r.offset, end: r.end, data: r.data.into(), truncated: r.truncated }
    }
}

impl Held {
    fn into_record(self) -> Record {
        Record { offset: self.offset, end: self.end, data: self.data.into(), truncated: self.truncated }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer(multiline: Option<&str>, skip: u32, max: usize) -> Framer {
        Framer::new(
            FramerConfig {
                multiline_start: multiline.map(|r| regex_lite::Regex::new(r).unwrap()),
                multiline_flush: Duration::from_secs(1),
                skip_header_lines: skip,
                max_record_bytes: max,
                truncated_terminator: b"...".to_vec(),
            },
            0,
        )
    }

    fn feed(f: &mut Framer, chunks: &[&[u8]]) -> Vec<Record> {
        let mut out = Vec::new();
        for c in chunks {
            let at = f.next_offset();
            f.push(at, &Bytes::copy_from_slice(c), &mut out);
        }
        out
    }

    fn datas(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned()).collect()
    }

    #[test]
    fn lines_split_across_reads_keep_their_offsets_and_bytes() {
        let mut f = framer(None, 0, 1024);
        let out = feed(&mut f, &[b"one\ntw", b"o\n\xff\x00bin\nthree"]);
        assert_eq!(datas(&out), ["one", "two", "\u{fffd}\u{0}bin"]);
        assert_eq!(&out[2].data[..], b"\xff\x00bin", "bytes stay bytes");
        assert_eq!(out.iter().map(|r| (r.offset, r.end)).collect::<Vec<_>>(), [(0, 4), (4, 8), (8, 14)]);
        assert_eq!(f.settled_offset(), 14, "the unfinished line waits for its newline");
        assert_eq!(f.next_offset(), 19);
        let mut flushed = Vec::new();
        f.flush(&mut flushed);
        assert_eq!((datas(&flushed), flushed[0].offset, flushed[0].end), (vec!["three".to_owned()], 14, 19));
        assert_eq!(f.settled_offset(), 19);
    }

    #[test]
    fn multiline_records_gather_continuations_until_the_next_start() {
        let mut f = framer(Some(r"^\d{4}-"), 0, 1024);
        let out = feed(&mut f, &[b"2026-01 boom\n  at a\n  at b\n2026-02 ok\n"]);
        assert_eq!(datas(&out), ["2026-01 boom\n  at a\n  at b"]);
        assert_eq!((out[0].offset, out[0].end), (0, 27));
        assert_eq!(f.settled_offset(), 27);
        let mut flushed = Vec::new();
        f.flush(&mut flushed);
        assert_eq!(datas(&flushed), ["2026-02 ok"]);
    }

    #[test]
    fn long_lines_are_cut_with_the_terminator_and_counted() {
        let mut f = framer(None, 0, 16);
        let out = feed(&mut f, &[b"0123456789abcdefghij", b"klmn\nshort\n"]);
        assert_eq!(datas(&out), ["0123456789abc...", "short"]);
        assert!(out[0].truncated);
        assert_eq!((out[0].end, out[1].offset), (25, 25));
        assert_eq!(f.dropped_bytes, 8);
    }

    #[test]
    fn header_lines_are_skipped_once_per_file() {
        let mut f = framer(None, 2, 1024);
        let out = feed(&mut f, &[b"h1\nh2\nrow\n"]);
        assert_eq!(datas(&out), ["row"]);
        assert_eq!(out[0].offset, 6);
    }
}

//! Turns a file's bytes into records: lines (without their newline), joined into multiline
//! records when the flow says how a record starts, cut at the flow's size limit. Bytes stay
//! bytes (no UTF-8 requirement). A record knows the file range it came from, so an
//! acknowledged offset always ends on a record boundary.

use std::time::Duration;

/// One record: the file range it came from, and where its bytes are in the [`Framed`] that
/// holds it. 32 bytes: a megabyte read holds ten thousand of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// File offset of the record's first byte.
    pub offset: u64,
    /// File offset just past the record, its newline included.
    pub end: u64,
    /// Where the bytes are: in the bytes read (where the line lay whole), or, when
    /// `gathered`, in the bytes gathered across reads (and multiline records, and cut lines).
    start: usize,
    /// At most max_record_bytes, which is at most 1 GiB.
    len: u32,
    gathered: bool,
    /// Cut at `max_record_bytes` (the rest up to the newline was dropped and counted).
    pub truncated: bool,
}

const _: () = assert!(std::mem::size_of::<Record>() == 32);

/// Where a record's bytes are (see [`Record`]).
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    len: u32,
    gathered: bool,
}

impl Record {
    fn new(offset: u64, end: u64, truncated: bool, bytes: Span) -> Record {
        Record { offset, end, start: bytes.start, len: bytes.len, gathered: bytes.gathered, truncated }
    }
}

/// Records cut from the bytes pushed, each kept as a range: most lines lie whole in one
/// read and are neither copied nor reference-counted; the rest are gathered in one buffer.
/// Cleared and filled again for each batch, so its buffers are reused.
#[derive(Default)]
pub struct Framed {
    read: Vec<u8>,
    gathered: Vec<u8>,
    records: Vec<Record>,
    /// Sum of the records' lengths, and how many were cut: kept as they are added, for
    /// the counters, instead of another pass over the records.
    data_bytes: u64,
    cut: usize,
}

impl Framed {
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn data(&self, r: &Record) -> &[u8] {
        let bytes = if r.gathered { &self.gathered } else { &self.read };
        &bytes[r.start..r.start + r.len as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of all records (newlines not included).
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Records cut at `max_record_bytes`.
    pub fn cut(&self) -> usize {
        self.cut
    }

    pub fn clear(&mut self) {
        self.read.clear();
        self.gathered.clear();
        self.records.clear();
        self.data_bytes = 0;
        self.cut = 0;
    }

    /// Drops the records that start before `offset` (a sink took them).
    pub fn drop_before(&mut self, offset: u64) {
        let n = self.records.iter().take_while(|r| r.offset < offset).count();
        for r in self.records.drain(..n) {
            self.data_bytes -= u64::from(r.len);
            self.cut -= usize::from(r.truncated);
        }
    }

    fn add(&mut self, r: Record) {
        self.data_bytes += u64::from(r.len);
        self.cut += usize::from(r.truncated);
        self.records.push(r);
    }

    fn gather(&mut self, bytes: &[u8]) -> Span {
        let start = self.gathered.len();
        self.gathered.extend_from_slice(bytes);
        Span { start, len: bytes.len() as u32, gathered: true }
    }
}

#[derive(Clone, Debug)]
pub struct FramerConfig {
    pub multiline_start: Option<crate::line_regex::Regex>,
    pub multiline_flush: Duration,
    pub skip_header_lines: u32,
    pub max_record_bytes: usize,
    pub truncated_terminator: Vec<u8>,
}

pub struct Framer {
    /// The flow's, shared by its files.
    config: std::sync::Arc<FramerConfig>,
    /// Bytes of an unfinished line, starting at file offset `line_start`.
    line: Vec<u8>,
    line_start: u64,
    /// Bytes of the current line dropped past the size limit (they still count as read).
    line_dropped: u64,
    /// Multiline: the record being gathered, waiting for the next start line.
    held: Option<Gathering>,
    lines_seen: u64,
    /// Bytes dropped by the size limit.
    pub dropped_bytes: u64,
    /// Where the newlines of the bytes being pushed are (kept for its capacity).
    newlines: Vec<usize>,
}

impl Framer {
    pub fn new(config: impl Into<std::sync::Arc<FramerConfig>>, offset: u64) -> Framer {
        Framer {
            config: config.into(),
            line: Vec::new(),
            line_start: offset,
            line_dropped: 0,
            held: None,
            lines_seen: 0,
            dropped_bytes: 0,
            newlines: Vec::new(),
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

    /// Bytes read from the file at `offset` (which must be `next_offset()`); the records they
    /// complete are added to `out`, which keeps the bytes (moved in when `out` holds none yet).
    pub fn push(&mut self, offset: u64, bytes: Vec<u8>, out: &mut Framed) {
        debug_assert_eq!(offset, self.next_offset());
        let base = out.read.len();
        if base == 0 {
            out.read = bytes;
        } else {
            out.read.extend_from_slice(&bytes);
        }
        let mut newlines = std::mem::take(&mut self.newlines);
        newlines.clear();
        crate::newlines::find_all(&out.read[base..], &mut newlines);
        let mut start = base;
        // Lines that need nothing but a record (the usual case): no multiline joining, no
        // header left to skip.
        let plain = self.config.multiline_start.is_none();
        let headers = u64::from(self.config.skip_header_lines);
        for &i in &newlines {
            let end = base + i;
            let len = end - start;
            let whole = self.line.is_empty() && self.line_dropped == 0 && len <= self.config.max_record_bytes;
            if whole && plain && self.lines_seen >= headers {
                let line_end = offset + i as u64 + 1;
                let span = Span { start, len: len as u32, gathered: false };
                out.add(Record::new(std::mem::replace(&mut self.line_start, line_end), line_end, false, span));
                self.lines_seen += 1;
                start = end + 1;
                continue;
            }
            if !whole {
                self.extend_line(&out.read[start..end]);
            }
            self.finish_line(
                offset + i as u64 + 1,
                whole.then_some(Span { start, len: len as u32, gathered: false }),
                out,
            );
            start = end + 1;
        }
        self.extend_line(&out.read[start..]);
        self.newlines = newlines;
    }

    fn extend_line(&mut self, bytes: &[u8]) {
        let room = self.config.max_record_bytes.saturating_sub(self.line.len());
        let keep = room.min(bytes.len());
        self.line.extend_from_slice(&bytes[..keep]);
        let dropped = (bytes.len() - keep) as u64;
        self.line_dropped += dropped;
        self.dropped_bytes += dropped;
    }

    /// A line ended at `end` (just past its newline): `whole` is where it lies in the bytes
    /// read when it lay whole in them, else its bytes are in `self.line`.
    fn finish_line(&mut self, end: u64, whole: Option<Span>, out: &mut Framed) {
        let truncated = std::mem::take(&mut self.line_dropped) > 0;
        if truncated {
            let keep = self.config.max_record_bytes.saturating_sub(self.config.truncated_terminator.len());
            self.line.truncate(keep);
            self.line.extend_from_slice(&self.config.truncated_terminator);
        }
        let offset = std::mem::replace(&mut self.line_start, end);
        self.lines_seen += 1;
        if self.lines_seen <= u64::from(self.config.skip_header_lines) {
            self.line.clear();
            return;
        }
        let Some(starts) = &self.config.multiline_start else {
            let bytes = whole.unwrap_or_else(|| out.gather(&self.line));
            self.line.clear();
            out.add(Record::new(offset, end, truncated, bytes));
            return;
        };
        let data = match whole {
            Some(Span { start, len, .. }) => &out.read[start..start + len as usize],
            None => &self.line[..],
        };
        if starts.is_match(data) {
            let next = Gathering { offset, end, data: data.to_vec(), truncated };
            if let Some(held) = self.held.replace(next) {
                held.emit(out);
            }
        } else if let Some(held) = &mut self.held {
            if held.data.len() + 1 + data.len() <= self.config.max_record_bytes {
                held.data.push(b'\n');
                held.data.extend_from_slice(data);
            } else {
                held.truncated = true;
                self.dropped_bytes += data.len() as u64 + 1;
            }
            held.end = end;
        } else {
            let bytes = whole.unwrap_or_else(|| out.gather(&self.line));
            out.add(Record::new(offset, end, truncated, bytes));
        }
        self.line.clear();
    }

    /// Everything held back, once nothing new has come for the flush timeout: the multiline
    /// record being gathered, then the final line that has no newline yet.
    pub fn flush(&mut self, out: &mut Framed) {
        if let Some(held) = self.held.take() {
            held.emit(out);
        }
        if !self.line.is_empty() || self.line_dropped > 0 {
            let end = self.next_offset();
            let bytes = out.gather(&self.line);
            self.line.clear();
            let truncated = std::mem::take(&mut self.line_dropped) > 0;
            out.add(Record::new(self.line_start, end, truncated, bytes));
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
struct Gathering {
    offset: u64,
    end: u64,
    data: Vec<u8>,
    truncated: bool,
}

impl Gathering {
    fn emit(self, out: &mut Framed) {
        let bytes = out.gather(&self.data);
        out.add(Record::new(self.offset, self.end, self.truncated, bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer(multiline: Option<&str>, skip: u32, max: usize) -> Framer {
        Framer::new(
            FramerConfig {
                multiline_start: multiline.map(|r| crate::line_regex::compile(r).unwrap()),
                multiline_flush: Duration::from_secs(1),
                skip_header_lines: skip,
                max_record_bytes: max,
                truncated_terminator: b"...".to_vec(),
            },
            0,
        )
    }

    /// Every chunk pushed into one `Framed` (as a recovery after a truncation does).
    fn feed(f: &mut Framer, chunks: &[&[u8]]) -> Framed {
        let mut out = Framed::default();
        for c in chunks {
            let at = f.next_offset();
            f.push(at, c.to_vec(), &mut out);
        }
        out
    }

    fn datas(framed: &Framed) -> Vec<String> {
        framed.records().iter().map(|r| String::from_utf8_lossy(framed.data(r)).into_owned()).collect()
    }

    fn ranges(framed: &Framed) -> Vec<(u64, u64)> {
        framed.records().iter().map(|r| (r.offset, r.end)).collect()
    }

    #[test]
    fn lines_split_across_reads_keep_their_offsets_and_bytes() {
        let mut f = framer(None, 0, 1024);
        let out = feed(&mut f, &[b"one\ntw", b"o\n\xff\x00bin\nthree"]);
        assert_eq!(datas(&out), ["one", "two", "\u{fffd}\u{0}bin"]);
        assert_eq!(out.data(&out.records()[2]), b"\xff\x00bin", "bytes stay bytes");
        assert_eq!(ranges(&out), [(0, 4), (4, 8), (8, 14)]);
        assert_eq!(f.settled_offset(), 14, "the unfinished line waits for its newline");
        assert_eq!(f.next_offset(), 19);
        let mut flushed = Framed::default();
        f.flush(&mut flushed);
        assert_eq!((datas(&flushed), ranges(&flushed)), (vec!["three".to_owned()], vec![(14, 19)]));
        assert_eq!(f.settled_offset(), 19);
    }

    #[test]
    fn a_framed_cleared_per_read_holds_only_that_reads_records() {
        let mut f = framer(None, 0, 1024);
        let mut out = Framed::default();
        let mut seen = Vec::new();
        for chunk in [&b"a\nbb\ncc"[..], b"c\n", b"\nd", b"ddd\ne\n"] {
            out.clear();
            let at = f.next_offset();
            f.push(at, chunk.to_vec(), &mut out);
            seen.push((datas(&out), ranges(&out)));
        }
        assert_eq!(
            seen,
            [
                (vec!["a".to_owned(), "bb".to_owned()], vec![(0, 2), (2, 5)]),
                (vec!["ccc".to_owned()], vec![(5, 9)]),
                (vec!["".to_owned()], vec![(9, 10)]),
                (vec!["dddd".to_owned(), "e".to_owned()], vec![(10, 15), (15, 17)]),
            ]
        );
    }

    #[test]
    fn multiline_records_gather_continuations_until_the_next_start() {
        let mut f = framer(Some(r"^\d{4}-"), 0, 1024);
        let out = feed(&mut f, &[b"2026-01 boom\n  at a\n  at b\n2026-02 ok\n"]);
        assert_eq!(datas(&out), ["2026-01 boom\n  at a\n  at b"]);
        assert_eq!(ranges(&out), [(0, 27)]);
        assert_eq!(f.settled_offset(), 27);
        let mut flushed = Framed::default();
        f.flush(&mut flushed);
        assert_eq!(datas(&flushed), ["2026-02 ok"]);
    }

    #[test]
    fn long_lines_are_cut_with_the_terminator_and_counted() {
        let mut f = framer(None, 0, 16);
        let out = feed(&mut f, &[b"0123456789abcdefghij", b"klmn\nshort\n"]);
        assert_eq!(datas(&out), ["0123456789abc...", "short"]);
        assert!(out.records()[0].truncated && !out.records()[1].truncated);
        assert_eq!(ranges(&out), [(0, 25), (25, 31)]);
        assert_eq!(f.dropped_bytes, 8);
    }

    #[test]
    fn header_lines_are_skipped_once_per_file() {
        let mut f = framer(None, 2, 1024);
        let out = feed(&mut f, &[b"h1\nh2\nrow\n"]);
        assert_eq!(datas(&out), ["row"]);
        assert_eq!(ranges(&out), [(6, 10)]);
    }
}

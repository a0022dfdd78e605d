//! Kernel event records decoded from ring-buffer bytes into owned values. The record types
//! are the ones in collector-common, so the layout is the kernel side's by construction.

use collector_common::{
    CAPTURE_CLASSES, CAPTURE_LEN, CAPTURED_WRITE_HEAD, CapturedWrite, EventHeader, EventKind, InodeKey, NameEvent,
    RangeEvent,
};

/// The task that caused an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    /// The task's cgroup v2 id.
    pub cgroup_id: u64,
    /// CLOCK_BOOTTIME nanoseconds when the hook ran.
    pub boot_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// `captured`: the first bytes written, when the kernel side carried them (a capture
    /// window after another task read the file); empty otherwise.
    Write {
        origin: Task,
        inode: InodeKey,
        pos: u64,
        len: u64,
        captured: Vec<u8>,
    },
    /// `captured`: the bytes read, as far as they lie past where the daemon had read (see
    /// `collector_common::READ_CAPTURE_REACH`); empty otherwise.
    Read {
        origin: Task,
        inode: InodeKey,
        pos: u64,
        len: u64,
        captured: Vec<u8>,
    },
    Copy {
        origin: Task,
        source: InodeKey,
        pos: u64,
        len: u64,
        destination: InodeKey,
        destination_pos: u64,
    },
    /// A write whose bytes `truncation` (see `Truncate`) cut before the write's exit hook
    /// ran: they were at `pos` in the contents before it. `captured`: as much of them as
    /// the kernel side carried (nothing for a write from an iovec).
    CutWrite {
        origin: Task,
        inode: InodeKey,
        pos: u64,
        len: u64,
        captured: Vec<u8>,
        truncation: u64,
    },
    /// `truncation`: which truncation of the file this is, counting from when the kernel
    /// side started watching it.
    Truncate {
        origin: Task,
        inode: InodeKey,
        size_before: u64,
        size_after: u64,
        truncation: u64,
    },
    /// `name` as the caller passed it: absolute, or relative to `base_dir` (descriptor
    /// `dfd`). `new_parent` is zero where the attach mode cannot see it; `inode` is zero on
    /// kernels where tracepoint mode cannot see which inode moved.
    Rename {
        origin: Task,
        inode: InodeKey,
        new_parent: InodeKey,
        old_parent: InodeKey,
        base_dir: InodeKey,
        dfd: i32,
        name: Vec<u8>,
    },
    Create {
        origin: Task,
        inode: InodeKey,
        parent: InodeKey,
        name: Vec<u8>,
    },
    Unlink {
        origin: Task,
        inode: InodeKey,
        parent: InodeKey,
        name: Vec<u8>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {0} bytes is too short for an event header")]
    Short(usize),
    #[error("ring buffer record has unknown event kind {0}")]
    UnknownKind(u32),
    #[error("{kind} record has {got} bytes, expected {expected}")]
    Size { kind: &'static str, got: usize, expected: usize },
}

impl KernelEvent {
    pub fn origin(&self) -> &Task {
        match self {
            KernelEvent::Write { origin, .. }
            | KernelEvent::CutWrite { origin, .. }
            | KernelEvent::Read { origin, .. }
            | KernelEvent::Copy { origin, .. }
            | KernelEvent::Truncate { origin, .. }
            | KernelEvent::Rename { origin, .. }
            | KernelEvent::Create { origin, .. }
            | KernelEvent::Unlink { origin, .. } => origin,
        }
    }

    /// The inode the event is about (a copy's source).
    pub fn inode(&self) -> InodeKey {
        match self {
            KernelEvent::Write { inode, .. }
            | KernelEvent::CutWrite { inode, .. }
            | KernelEvent::Read { inode, .. }
            | KernelEvent::Truncate { inode, .. }
            | KernelEvent::Rename { inode, .. }
            | KernelEvent::Create { inode, .. }
            | KernelEvent::Unlink { inode, .. } => *inode,
            KernelEvent::Copy { source, .. } => *source,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < size_of::<EventHeader>() {
            return Err(DecodeError::Short(bytes.len()));
        }
        let kind_raw = u32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes"));
        let kind = EventKind::from_u32(kind_raw).ok_or(DecodeError::UnknownKind(kind_raw))?;
        match kind {
            EventKind::Write | EventKind::Read | EventKind::Copy | EventKind::Truncate => {
                let r: RangeEvent = read_record(bytes, kind)?;
                let origin = origin(&r.header);
                let inode = r.header.inode;
                Ok(match kind {
                    EventKind::Write => {
                        KernelEvent::Write { origin, inode, pos: r.pos, len: r.len, captured: Vec::new() }
                    }
                    EventKind::Read => {
                        KernelEvent::Read { origin, inode, pos: r.pos, len: r.len, captured: Vec::new() }
                    }
                    EventKind::Truncate => KernelEvent::Truncate {
                        origin,
                        inode,
                        size_before: r.pos,
                        size_after: r.len,
                        truncation: r.peer_pos,
                    },
                    _ => KernelEvent::Copy {
                        origin,
                        source: inode,
                        pos: r.pos,
                        len: r.len,
                        destination: r.peer,
                        destination_pos: r.peer_pos,
                    },
                })
            }
            EventKind::WriteCaptured | EventKind::WriteCut | EventKind::ReadCaptured => {
                // The record is one of the CAPTURE_CLASSES sizes: a fixed head, then data.
                if !CAPTURE_CLASSES.iter().any(|&n| bytes.len() == CAPTURED_WRITE_HEAD + n) {
                    // Named by the nearest class size at or above what came.
                    let expected = CAPTURE_CLASSES
                        .iter()
                        .map(|n| CAPTURED_WRITE_HEAD + n)
                        .find(|&size| size >= bytes.len())
                        .unwrap_or(CAPTURED_WRITE_HEAD + CAPTURE_LEN);
                    return Err(DecodeError::Size { kind: kind.name(), got: bytes.len(), expected });
                }
                let w: CapturedWrite<0> = read_record(&bytes[..CAPTURED_WRITE_HEAD], kind)?;
                let data = &bytes[CAPTURED_WRITE_HEAD..];
                let captured = data[..(w.captured as usize).min(data.len())].to_vec();
                let (origin, inode, pos, len) = (origin(&w.header), w.header.inode, w.pos, w.len);
                Ok(match kind {
                    EventKind::WriteCut => {
                        KernelEvent::CutWrite { origin, inode, pos, len, captured, truncation: w.truncation }
                    }
                    EventKind::ReadCaptured => KernelEvent::Read { origin, inode, pos, len, captured },
                    _ => KernelEvent::Write { origin, inode, pos, len, captured },
                })
            }
            EventKind::Rename | EventKind::Create | EventKind::Unlink => {
                let n: NameEvent = read_record(bytes, kind)?;
                let origin = origin(&n.header);
                let inode = n.header.inode;
                let name = n.name[..(n.name_len as usize).min(n.name.len())].to_vec();
                Ok(match kind {
                    EventKind::Rename => KernelEvent::Rename {
                        origin,
                        inode,
                        new_parent: n.new_parent,
                        old_parent: n.old_parent,
                        base_dir: n.base_dir,
                        dfd: n.dfd,
                        name,
                    },
                    EventKind::Create => KernelEvent::Create { origin, inode, parent: n.new_parent, name },
                    _ => KernelEvent::Unlink { origin, inode, parent: n.old_parent, name },
                })
            }
        }
    }
}

fn read_record<T: Copy>(bytes: &[u8], kind: EventKind) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if bytes.len() != expected {
        return Err(DecodeError::Size { kind: kind.name(), got: bytes.len(), expected });
    }
    // SAFETY: T is a #[repr(C)] plain-old-data record of exactly this many bytes.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn origin(h: &EventHeader) -> Task {
    let comm_len = h.comm.iter().position(|&b| b == 0).unwrap_or(h.comm.len());
    Task {
        tid: h.tid,
        pid: h.tgid,
        comm: String::from_utf8_lossy(&h.comm[..comm_len]).into_owned(),
        cgroup_id: h.cgroup_id,
        boot_ns: h.boot_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use collector_common::NAME_LEN;

    fn header(kind: EventKind) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"gzip");
        EventHeader {
            kind: kind as u32,
            tid: 7,
            tgid: 6,
            _pad: 0,
            boot_ns: 99,
            comm,
            cgroup_id: 5,
            inode: InodeKey::new(3, 42),
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: `v` is a live reference to size_of::<T>() bytes, and the tests pass only #[repr(C)]
        // records without implicit padding, so every byte is initialised.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_a_truncate_record() {
        let r = RangeEvent {
            header: header(EventKind::Truncate),
            pos: 100,
            len: 0,
            peer: InodeKey::default(),
            peer_pos: 4,
        };
        let e = KernelEvent::decode(&bytes_of(&r)).unwrap();
        assert_eq!(
            e,
            KernelEvent::Truncate {
                origin: Task { tid: 7, pid: 6, comm: "gzip".into(), cgroup_id: 5, boot_ns: 99 },
                inode: InodeKey::new(3, 42),
                size_before: 100,
                size_after: 0,
                truncation: 4,
            }
        );
    }

    #[test]
    fn decodes_a_rename_record_with_its_name() {
        let mut name = [0u8; NAME_LEN];
        name[..9].copy_from_slice(b"app.log.1");
        let n = NameEvent {
            header: header(EventKind::Rename),
            new_parent: InodeKey::new(3, 10),
            old_parent: InodeKey::new(3, 11),
            base_dir: InodeKey::new(3, 12),
            dfd: -100,
            name_len: 9,
            name,
        };
        match KernelEvent::decode(&bytes_of(&n)).unwrap() {
            KernelEvent::Rename { new_parent, old_parent, base_dir, dfd, name, .. } => {
                assert_eq!((new_parent.ino, old_parent.ino, base_dir.ino, dfd), (10, 11, 12, -100));
                assert_eq!(name, b"app.log.1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_records_of_the_wrong_size_or_kind() {
        let r = RangeEvent { header: header(EventKind::Write), pos: 0, len: 1, peer: InodeKey::default(), peer_pos: 0 };
        let mut b = bytes_of(&r);
        b.pop();
        assert!(matches!(KernelEvent::decode(&b), Err(DecodeError::Size { kind: "write", .. })));
        b.push(0);
        b[0] = 99;
        assert_eq!(KernelEvent::decode(&b), Err(DecodeError::UnknownKind(99)));
        assert_eq!(KernelEvent::decode(&b[..3]), Err(DecodeError::Short(3)));
    }

    #[test]
    fn decodes_captured_writes_of_every_class_and_rejects_other_sizes() {
        fn record<const N: usize>(bytes: &[u8]) -> Vec<u8> {
            record_of::<N>(EventKind::WriteCaptured, bytes)
        }
        fn record_of<const N: usize>(kind: EventKind, bytes: &[u8]) -> Vec<u8> {
            let mut w = CapturedWrite::<N> {
                header: header(kind),
                pos: 10,
                len: bytes.len() as u64,
                captured: bytes.len() as u64,
                truncation: 3,
                data: [0; N],
            };
            w.data[..bytes.len()].copy_from_slice(bytes);
            bytes_of(&w)
        }
        let line = b"GET /index.html 200\n";
        for b in [record::<128>(line), record::<512>(line), record::<4096>(line)] {
            match KernelEvent::decode(&b).unwrap() {
                KernelEvent::Write { pos, len, captured, .. } => {
                    assert_eq!((pos, len, captured.as_slice()), (10, line.len() as u64, &line[..]));
                }
                other => panic!("{other:?}"),
            }
        }
        match KernelEvent::decode(&record_of::<512>(EventKind::WriteCut, line)).unwrap() {
            KernelEvent::CutWrite { pos, captured, truncation, .. } => {
                assert_eq!((pos, captured.as_slice(), truncation), (10, &line[..], 3));
            }
            other => panic!("{other:?}"),
        }
        match KernelEvent::decode(&record_of::<4096>(EventKind::ReadCaptured, line)).unwrap() {
            KernelEvent::Read { pos, captured, .. } => assert_eq!((pos, captured.as_slice()), (10, &line[..])),
            other => panic!("{other:?}"),
        }
        let mut odd = record::<128>(line);
        odd.push(0);
        assert!(matches!(KernelEvent::decode(&odd), Err(DecodeError::Size { kind: "write", .. })));
    }
}

//! A deterministic simulation of the engine against a model filesystem and a model of the
//! kernel's event stream: random histories from a seed, each checked for what the
//! collector promises (../SEMANTICS.md): every byte written to a shipped file is shipped
//! exactly once and in order, copies and derived files are never shipped, and bytes are
//! reported lost only where the history made them unrecoverable, and then exactly.
//!
//! The model, and what it takes from the kernel programs:
//! - one watched directory, `/logs`; the flow ships `/logs/app.log`, or `/logs/app.log*`,
//!   which also matches rotated names, copies and archives (as Kinesis Agent users write);
//! - writers append whole lines (O_APPEND) to the inode they hold open; after a rotation
//!   by rename they reopen the name a little later, as after a HUP;
//! - every write is reported as it lands (its event carries its first `CAPTURE_LEN` bytes
//!   within a capture window that another task's read opens), or, for a slow one, after
//!   a truncation that may have cut it (then as a cut write naming that truncation);
//! - logrotate's copytruncate: create the copy, 8 KiB read/write rounds (the reads carry
//!   the bytes past the collector's read position), then ftruncate, with or without
//!   compress (the copy read into a .gz, then deleted);
//! - rotation by rename and create, delete and recreate, truncation in place;
//! - events are taken by the engine in order, any number at a time (its budget), and late:
//!   reads see the files as they are, with events of earlier changes still in the ring;
//!   after the reads, every event in the ring is taken (an event is in the ring once its
//!   change is made);
//! - the sink refuses batches, or takes only their first records.
//!
//! `SIMULATION_SEED=<seed>` replays one history and prints it; `SIMULATION_HISTORIES=<n>`
//! runs more (or fewer) than the default; `SIMULATION_ALL=1` prints every violation, not
//! only the first history's.

mod collector;
mod model;

use std::{path::PathBuf, time::Instant};

use collector::Collector;
use model::{Model, key};

const HISTORIES: u64 = 20_000;
pub(super) const LOG: &str = "/logs/app.log";
pub(super) const LOGROTATE: u32 = 900;
pub(super) const GZIP: u32 = 901;
/// logrotate copies in rounds of this size.
pub(super) const COPY_ROUND: usize = 8192;

/// What one history did.
struct Outcome {
    events: u64,
    violations: Vec<String>,
}

fn history(seed: u64, verbose: bool) -> Outcome {
    let mut m = Model::new(seed, verbose);
    let mut c = Collector::new(Instant::now(), m.exact);
    c.refuse_percent = [0, 5, 20][m.rng.below(3) as usize];
    c.engine.discovered(key(m.names[LOG]), 0, PathBuf::from(LOG), 0, false, c.now(&m));
    c.effects(&mut m);
    let steps = 20 + m.rng.below(200);
    let mut events = 0;
    for _ in 0..steps {
        // Now and then a freed inode number goes to the next file made.
        if m.reuse_next.is_none()
            && m.rng.chance(3)
            && let Some(i) = c.reusable(&m)
        {
            m.retire(i);
            c.durable.retire(i);
        }
        m.act();
        // Killed at any moment, also while a rotation is under way (what the collector
        // held in memory of one then dies with it, uncounted: `restart`).
        if m.rng.chance(1) && c.durable.crashes < 2 {
            c = c.restart(&mut m);
        } else if m.rng.chance(1) && c.durable.stops < 2 && m.slow.is_empty() && m.script.is_empty() {
            // Stopped cleanly (SIGTERM), also while a truncation is carried on: the stop
            // finishes it for up to FINISH_ON_STOP while writers and logrotate go on.
            c = c.stop(&mut m);
        }
        if m.rng.chance(30) {
            events += m.queue.len() as u64;
            c.turn(&mut m, false);
        }
        if m.rng.chance(10) {
            c.tick(&mut m);
        }
    }
    // The end: the writers stop, rotations finish, slow writes report, and the collector
    // catches up with a sink that takes everything.
    while !m.script.is_empty() {
        m.rotation_step();
    }
    while !m.slow.is_empty() {
        m.finish_slow(0);
    }
    c.refuse_percent = 0;
    for _ in 0..20 {
        events += m.queue.len() as u64;
        m.now_ns += 300_000_000;
        c.tick(&mut m);
        c.turn(&mut m, true);
    }
    let violations = check(&m, &c);
    Outcome { events, violations }
}

/// A copy that shipped its original's unread tail after a restart: whole lines of the
/// original, in order; again only those it may repeat (taken past its checkpoint before a
/// later kill).
fn check_tail(
    m: &Model,
    copy: usize,
    (original, born): (usize, u64),
    shipped: &[(u64, u64, Vec<u8>)],
    may_repeat: &[Vec<u8>],
    violations: &mut Vec<String>,
) {
    let lines = &m.file(original, born).lines;
    let mut next = 0;
    for (at, _, data) in shipped {
        // Where bytes may be lost, the copy's last line may lack the rest it had past the
        // copy's end (captured by the kernel, in memory only). A whole line first.
        let exact = lines[next..].iter().position(|l| l == data);
        let found = exact.or_else(|| lines[next..].iter().position(|l| m.may_lose && l.starts_with(data)));
        match found {
            Some(k) => next += k + 1,
            None if may_repeat.iter().any(|l| l == data || m.may_lose && l.starts_with(data)) => {}
            _ => violations.push(format!(
                "inode {}, the copy of inode {}: {:?} (at {at}) is no line of it, or shipped twice or out of order",
                copy + 1,
                original + 1,
                String::from_utf8_lossy(&data[..data.len().min(40)])
            )),
        }
    }
}

/// The promises, checked against what the model wrote and the sink took.
fn check(m: &Model, c: &Collector) -> Vec<String> {
    let mut violations = Vec::new();
    // Checkpoints move on: once all is settled, each file's is where it was acknowledged to.
    for inode in c.engine.unsaved() {
        violations.push(format!("inode {}: its checkpoint is behind what the sink took, at the end", inode.ino));
    }
    let mut written = 0u64;
    let mut shipped_bytes = 0u64;
    // Bytes shipped again after a crash, as it may.
    let mut repeated = 0u64;
    // Each file: those at their inode numbers now, and those whose number a later file got.
    let live = m.inodes.iter().enumerate().map(|(i, f)| {
        let shipped = c.durable.shipped.get(&key(i)).map(Vec::as_slice).unwrap_or_default();
        let may_repeat = c.durable.may_repeat.get(&i).cloned().unwrap_or_default();
        (i, f, shipped, may_repeat, c.durable.abandoned.contains(&i))
    });
    let retired = m
        .retired
        .iter()
        .zip(&c.durable.retired)
        .map(|((i, f), r)| (*i, f, r.shipped.as_slice(), r.may_repeat.clone(), r.abandoned));
    for (i, f, shipped, mut may_repeat, abandoned) in live.chain(retired) {
        if abandoned {
            continue;
        }
        if !f.original {
            if f.unclassified {
                // Shipped as a log of its own, or not.
            } else if let Some(original) = f.copy_of.filter(|_| f.ships_tail) {
                check_tail(m, i, original, shipped, &may_repeat, &mut violations);
            } else if !shipped.is_empty() {
                violations.push(format!(
                    "inode {} is a copy or derived file, and {} of its records were shipped",
                    i + 1,
                    shipped.len()
                ));
            }
            continue;
        }
        written += f.written();
        shipped_bytes += shipped.iter().map(|(at, end, _)| end - at).sum::<u64>();
        if m.verbose {
            let w = f.written();
            let sh: u64 = shipped.iter().map(|(at, end, _)| end - at).sum();
            println!("  inode {}: {w} bytes written, {sh} shipped", i + 1);
            for (at, end, data) in shipped {
                println!(
                    "  inode {} shipped {at}..{end} {:?}",
                    i + 1,
                    String::from_utf8_lossy(&data[..data.len().min(24)])
                );
            }
        }
        // Whole lines shipped, in the order they landed, none twice. Where bytes may be
        // lost, lines may be missing, and a line may be cut short where a gap begins.
        let show = |data: &[u8]| String::from_utf8_lossy(&data[..data.len().min(40)]).into_owned();
        let mut next = 0;
        for (at, end, data) in shipped {
            // A whole line first: a short record may be a torn line's first part, which is
            // also the start of other lines.
            let exact = |line: &Vec<u8>| line == data;
            let whole = f.lines[next..].iter().any(exact);
            let matches = |line: &Vec<u8>| line == data || !whole && m.may_lose && line.starts_with(data);
            match f.lines[next..].iter().position(matches) {
                Some(0) => next += 1,
                Some(skipped) => {
                    if !m.may_lose {
                        violations.push(format!(
                            "inode {}: shipped {:?} at {at}..{end}, but {:?} came before it and was never shipped",
                            i + 1,
                            show(data),
                            show(&f.lines[next])
                        ));
                        break;
                    }
                    next += skipped + 1;
                }
                // Sent again after a kill, or a line cut short (as `matches`) sent again.
                None if may_repeat.iter().any(matches) => {
                    let at_repeat = may_repeat.iter().position(matches).expect("contained");
                    may_repeat.swap_remove(at_repeat);
                    repeated += end - at;
                }
                None if f.lines[..next].iter().any(matches) => {
                    violations.push(format!(
                        "inode {}: {:?} (at {at}..{end}) shipped twice or out of order",
                        i + 1,
                        show(data)
                    ));
                    break;
                }
                None => {
                    violations.push(format!(
                        "inode {}: shipped {:?} at {at}..{end}, which was never written",
                        i + 1,
                        show(data)
                    ));
                    break;
                }
            }
        }
        if m.verbose {
            let w = f.written();
            let sh: u64 = shipped.iter().map(|(at, end, _)| end - at).sum();
            println!("  inode {}: {w} bytes written, {sh} shipped", i + 1);
            for (at, end, data) in shipped {
                if end - at != data.len() as u64 + 1 {
                    println!("  inode {}: record {at}..{end} holds {} bytes", i + 1, data.len());
                }
            }
            let shipped_lines: Vec<&[u8]> = shipped.iter().map(|(_, _, d)| d.as_slice()).collect();
            for line in &f.lines {
                if !shipped_lines.iter().any(|d| line.starts_with(d) && !d.is_empty()) {
                    println!("  inode {}: never shipped: {:?} ({} bytes)", i + 1, show(line), line.len() + 1);
                }
            }
        }
        if !m.may_lose && next < f.lines.len() {
            violations.push(format!(
                "inode {}: {} lines were never shipped, the first {:?}",
                i + 1,
                f.lines.len() - next,
                show(&f.lines[next])
            ));
        }
    }
    // An archive nothing says is derived may be counted lost if it was gone before it
    // could be opened.
    let unclassified: u64 =
        m.inodes.iter().filter(|f| !f.original && f.unclassified).map(|f| f.data.len() as u64).sum();
    let lost = c.durable.lost_before + c.engine.counters[0].bytes_lost;
    if !m.may_lose && lost > unclassified {
        violations.push(format!("{lost} bytes counted lost in a history that loses none"));
    }
    let shipped_bytes = shipped_bytes - repeated;
    // The loss counter is the flow's: with files left out of the check, it cannot be
    // held against the rest.
    // After a crash, bytes the dead collector shipped past its checkpoint may be counted
    // lost by the new one (a truncation took them before it read them again).
    let slack: u64 = c
        .durable
        .may_repeat
        .values()
        .chain(c.durable.retired.iter().map(|r| &r.may_repeat))
        .flatten()
        .map(|l| l.len() as u64 + 1)
        .sum();
    let accounted = shipped_bytes + lost;
    if (accounted < written || accounted > written + slack + unclassified)
        && !m.uncounted
        && c.durable.abandoned.is_empty()
        && c.durable.retired.iter().all(|r| !r.abandoned)
    {
        violations.push(format!("{written} bytes written, {shipped_bytes} shipped and {lost} counted lost"));
    }
    violations
}

#[test]
fn simulation() {
    let replay: Option<u64> =
        std::env::var("SIMULATION_SEED").ok().map(|s| s.parse().expect("SIMULATION_SEED: a number"));
    let histories: u64 = match (replay, std::env::var("SIMULATION_HISTORIES")) {
        (Some(_), _) => 1,
        (None, Ok(n)) => n.parse().expect("SIMULATION_HISTORIES: a number"),
        (None, Err(_)) => HISTORIES,
    };
    if replay.is_some() {
        // The engine's own account of the history, with the model's.
        let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_test_writer().try_init();
    }
    let first = replay.unwrap_or_else(|| {
        // A different start each run, printed so a failure can be replayed.
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let print_all = std::env::var("SIMULATION_ALL").is_ok();
    let (mut events, mut violations, mut failing) = (0, 0, None);
    for n in 0..histories {
        let seed = first.wrapping_add(n);
        let outcome = history(seed, replay.is_some());
        events += outcome.events;
        if !outcome.violations.is_empty() {
            if print_all {
                for v in &outcome.violations {
                    println!("history {seed}: {v}");
                }
            }
            violations += outcome.violations.len();
            failing.get_or_insert((seed, outcome.violations));
        }
    }
    println!("simulation: {histories} histories, {events} events, {violations} violations (seed {first})");
    if let Some((seed, found)) = failing {
        let m = Model::new(seed, false);
        drop(m);
        for v in &found {
            println!("  {v}");
        }
        panic!(
            "history {seed} breaks a promise; replay it with SIMULATION_SEED={seed} cargo test -p collector simulation -- --nocapture"
        );
    }
}

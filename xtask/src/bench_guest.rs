//! writer-overhead inside a guest kernel, for the attach modes this host refuses (fentry,
//! kprobe), beside tracepoint mode in the same guest. Under QEMU's TCG, time says more
//! about the emulator than the kernel, so the guest runs with `-icount shift=0`: its clock
//! advances one nanosecond per guest instruction executed. The writer's CPU time is then
//! the instructions it executed (user + kernel): repeatable, and the same measure in every
//! mode. Instructions are not cycles (cache misses, the interrupts of a second core are not
//! in it), so the host's tracepoint row in seconds stays the reference for that mode.

use std::{collections::BTreeMap, fs, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};

use crate::guest::{self, Arch};

/// The guest kernels: the newest series of the test matrix, x86-64's and arm64's, and the
/// oldest (5.10, where fentry mode puts the write, read and copy hooks on kprobe).
/// XTASK_BENCH_GUESTS=arm64-6.12 measures one of them.
pub fn guests() -> Vec<String> {
    let all = ["6.12", "5.10", "arm64-6.12"];
    let wanted = std::env::var("XTASK_BENCH_GUESTS").ok();
    all.iter()
        .filter(|g| wanted.as_deref().is_none_or(|w| w.split(',').any(|x| x == **g)))
        .map(|g| g.to_string())
        .collect()
}
const MODES: &[&str] = &["fentry", "kprobe", "tracepoint"];
/// Fewer writes than on the host: one guest write costs microseconds of emulation. The
/// count is exact (icount), so a run's spread is small.
const WRITES: u64 = 200_000;
const RUNS: usize = 3;
/// The files written (as the guest script names them) and how the table names them. A
/// write to /dev/null stands for the pipes, sockets and terminals most writes of a host go to.
const FILES: [(&str, &str); 3] =
    [("watched", "watched"), ("unwatched", "unwatched"), ("devnull", "unwatched, not a regular file (/dev/null)")];

/// Instructions per write(2) of each run, by (mode, phase, file).
type Figures = BTreeMap<(String, String, String), Vec<f64>>;

pub struct GuestRows {
    pub table: String,
    pub release: String,
}

/// Needs `setup::run(true)` first (qemu, the guest kernels).
pub fn writer_overhead(series: &str) -> anyhow::Result<GuestRows> {
    let root = payload(Arch::of(series))?;
    // XTASK_BENCH_GUEST_MODES=fentry,kprobe: only those modes (to compare builds quickly).
    let wanted = std::env::var("XTASK_BENCH_GUEST_MODES").ok();
    let modes: Vec<&str> =
        MODES.iter().copied().filter(|m| wanted.as_deref().is_none_or(|w| w.split(',').any(|x| x == *m))).collect();
    let mut figures = Figures::new();
    for mode in &modes {
        eprintln!("+ guest {series} writer-overhead, {mode} mode");
        let run = guest::run_with(
            series,
            &root,
            &script(mode),
            Duration::from_secs(1200),
            guest::Network::None,
            &["-icount", "shift=0"],
        )?;
        if run.status != 0 {
            bail!("guest writer-overhead in {mode} mode failed (status {}):\n{}", run.status, run.output);
        }
        parse(&run.output, &mut figures).with_context(|| format!("guest output:\n{}", run.output))?;
    }
    let release =
        fs::read_to_string(guest::kernel_image(series).with_file_name("release")).unwrap_or_else(|_| series.to_owned());
    let mut table = String::from(
        "| mode | file | detached | empty programs on the same hooks | attached | empty vs detached | attached vs detached |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for mode in &modes {
        for (file, label) in FILES {
            let get = |phase: &str| {
                figures.get(&(mode.to_string(), phase.to_owned(), file.to_owned())).map(|v| median(v.clone()))
            };
            let (Some(off), Some(empty), Some(on)) = (get("detached"), get("empty"), get("attached")) else {
                bail!("guest {mode} mode: no {file} figures");
            };
            table.push_str(&format!(
                "| {mode} | {label} | {off:.0} | {empty:.0} | {on:.0} | {:.3}x | {:.3}x |\n",
                empty / off,
                on / off
            ));
        }
    }
    // The floor is measured before each mode's collector starts: all of them together.
    let all = |phase: &str| -> Vec<f64> {
        figures.iter().filter(|((_, p, f), _)| p == phase && f == "unwatched").flat_map(|(_, v)| v.clone()).collect()
    };
    let (off, floor) = (median(all("detached")), median(all("floor")));
    table.push_str(&format!(
        "| none: the renameat syscall tracepoints enabled with no program (tracefs) | unwatched | {off:.0} | - | {floor:.0} | - | {:.3}x |\n",
        floor / off
    ));
    Ok(GuestRows { table, release: release.trim().to_owned() })
}

/// The static collector and the C write loop, on the guests' base image.
fn payload(arch: Arch) -> anyhow::Result<PathBuf> {
    let collector = match arch {
        Arch::X86_64 => guest::static_collector()?,
        Arch::Arm64 => crate::build::collector_for(arch)?,
    };
    let root = guest::dir().join(format!("bench-payload-{}", arch.debian()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("t"))?;
    fs::copy(collector, root.join("t/collector"))?;
    guest::build_c_program("write_loop", arch, &root.join("t/write_loop"))?;
    Ok(root)
}

/// Detached loops before and after the collector ran (as on the host), attached loops while
/// `collector run` ships the watched file to the null sink in `mode`.
fn script(mode: &str) -> String {
    format!(
        r#"set -e
B=/tmp/bench
mkdir -p $B/logs $B/unwatched $B/state
printf '[collector]\nstate_dir = "%s"\n[[flow]]\nname = "bench"\npaths = ["%s"]\n[flow.sink]\nkind = "null"\n' \
  $B/state "$B/logs/*.log" > $B/collector.toml
loops() {{
  for i in $(seq {RUNS}); do
    echo "LOOP $1 watched $(/t/write_loop $B/logs/app.log {WRITES})"
    echo "LOOP $1 unwatched $(/t/write_loop $B/unwatched/other.log {WRITES})"
    echo "LOOP $1 devnull $(/t/write_loop /dev/null {WRITES})"
  done
}}
loops detached
# The floor of syscall tracepoints (tracepoint mode's; fentry/kprobe modes attach none):
# with one enabled, even with no program, every syscall of every task takes the tracing path.
T=/sys/kernel/tracing/events/syscalls
# (renameat's: arm64 has no rename syscall.)
echo 1 > $T/sys_enter_renameat/enable
echo 1 > $T/sys_exit_renameat/enable
for i in $(seq {RUNS}); do echo "LOOP floor unwatched $(/t/write_loop $B/unwatched/other.log {WRITES})"; done
echo 0 > $T/sys_enter_renameat/enable
echo 0 > $T/sys_exit_renameat/enable
# Until process $1 logs $3 in $2 (a minute at most).
started() {{
  n=0
  until grep -q "$3" $2; do
    n=$((n + 1))
    if [ $n -gt 600 ] || ! kill -0 $1 2>/dev/null; then cat $2; exit 1; fi
    sleep 0.1
  done
}}
/t/collector --attach-mode {mode} run --config $B/collector.toml 2> $B/collector.err &
pid=$!
started $pid $B/collector.err 'collector running'
grep -q 'mode={mode}' $B/collector.err || {{ cat $B/collector.err; exit 1; }}
grep 'collector running' $B/collector.err
loops attached
kill -TERM $pid
wait $pid
loops detached
# The mode's floor: empty programs on the same write hooks, nothing else attached.
/t/collector --attach-mode {mode} floor 2> $B/floor.err &
pid=$!
started $pid $B/floor.err 'empty programs attached mode={mode}'
loops empty
kill -TERM $pid
wait $pid
"#
    )
}

fn parse(output: &str, figures: &mut Figures) -> anyhow::Result<()> {
    let mode = MODES.iter().find(|m| output.contains(&format!("mode={m}")));
    let mut seen = 0;
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("LOOP ") else { continue };
        let parts: Vec<&str> = rest.split_whitespace().collect();
        let [phase, file, ns] = parts[..] else { bail!("bad line {line:?}") };
        let ns: f64 = ns.parse().with_context(|| format!("bad line {line:?}"))?;
        let mode = mode.context("the collector's mode is not in the guest's output")?;
        figures.entry((mode.to_string(), phase.to_owned(), file.to_owned())).or_default().push(ns / WRITES as f64);
        seen += 1;
    }
    if seen != 13 * RUNS {
        bail!("{seen} loop figures, expected {}", 13 * RUNS);
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Where the guest's figures come from, for BENCHMARKS.md.
pub fn describe(release: &str) -> String {
    format!(
        "Guest kernel {release} (Debian's cloud kernel, QEMU TCG, 1 vCPU, `-icount shift=0`): the same loop \
         ({WRITES} writes, median of {RUNS} runs, C instead of Rust) in the modes this host refuses, and \
         tracepoint mode again for comparison. Figures are guest instructions per write(2) (the guest's clock counts \
         one nanosecond per instruction, so the writer's CPU time is its instruction count, user and kernel); they \
         are exact and repeatable but are not cycles: cache misses and the other core's interrupts cost nothing \
         here. \"Empty programs on the same hooks\" is `collector floor`: programs that return at once, on the hooks \
         the mode puts on every write (fexit on vfs_write; kprobe and kretprobe on it; sys_enter_write and \
         sys_exit_write), and nothing else: what the hooking itself costs, the least any program there can cost. \
         The last row is the tracing path every syscall of the host takes once any syscall tracepoint is \
         enabled, measured with no program: fentry and kprobe modes attach none. A watched write that continues \
         the writer's last write event while the daemon has not taken it yet is folded into it and puts nothing in \
         the ring on x86-64; on arm64 nothing is folded (ARCHITECTURE.md): each watched write puts an event in the \
         ring, which is what \"attached\" minus \"unwatched\" costs there.\n\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_output_gives_one_figure_per_loop() {
        let mut out = String::from("... collector running mode=kprobe ...\n");
        for _ in 0..RUNS {
            out.push_str("LOOP floor unwatched 500\n");
        }
        for phase in ["detached", "attached", "detached", "empty"] {
            for _ in 0..RUNS {
                out.push_str(&format!(
                    "LOOP {phase} watched {}\nLOOP {phase} unwatched 1000\nLOOP {phase} devnull 1000\n",
                    2 * WRITES
                ));
            }
        }
        let mut figures = Figures::new();
        parse(&out, &mut figures).unwrap();
        let key = |p: &str, f: &str| ("kprobe".to_owned(), p.to_owned(), f.to_owned());
        assert_eq!(figures[&key("detached", "watched")], vec![2.0; 2 * RUNS]);
        assert_eq!(figures[&key("attached", "unwatched")].len(), RUNS);
        out.push_str("LOOP attached watched\n");
        assert!(parse(&out, &mut Figures::new()).is_err());
    }
}

//! Where the test servers (kinesis-local, moto) run. On this machine by default. Inside a
//! guest kernel, the tests ask the machine that runs the guest: QEMU's user network spawns
//! `cargo xtask guest-agent` (which calls `serve`) for each connection the guest opens to
//! the agent's address, and the servers it starts listen on that machine's 127.0.0.1, which
//! the guest reaches as 10.0.2.2. No port is opened on the host for the agent, and a server
//! lives exactly as long as the guest's connection that asked for it.
//!
//! One request per connection, one line:
//! - `kinesis-local <port> <stream>` and `moto <port>`: answers `listening`, then holds the
//!   server until the guest closes the connection; answers the close once the server is gone
//!   (a test that starts it again on the same port finds the port free).
//! - `port`: a port nothing listens on, on the host.
//! - `python <length>` and the script's bytes: runs them with moto's virtualenv python;
//!   answers `<status> <stdout length> <stderr length>`, then both outputs.

use std::{
    io::{BufReader, Read, Write},
    net::{Shutdown, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Set in the guests: where the agent is (`10.0.2.100:7000`) and the host's address as the
/// guest sees it (`10.0.2.2`).
const AGENT: &str = "COLLECTOR_TEST_SERVER_AGENT";
const HOST: &str = "COLLECTOR_TEST_SERVER_HOST";

/// The address the tests and the collector reach the servers at.
pub fn host() -> String {
    std::env::var(HOST).unwrap_or_else(|_| "127.0.0.1".to_owned())
}

/// `http://<host>:<port>`.
pub fn endpoint(port: u16) -> String {
    format!("http://{}:{port}", host())
}

/// A port nothing listens on now, where the servers run.
pub fn free_port() -> u16 {
    match agent() {
        None => crate::free_port(),
        Some(agent) => {
            let mut reader = request(&agent, "port\n", &[]);
            let answer = read_line(&mut reader);
            answer.trim().parse().unwrap_or_else(|_| panic!("the guest agent answered `port` with {answer:?}"))
        }
    }
}

fn agent() -> Option<String> {
    std::env::var(AGENT).ok()
}

/// A running test server, here or on the guest's host; stopped on drop.
pub enum Server {
    Local(Child),
    Remote(TcpStream),
}

impl Server {
    /// kinesis-local (kinesis-mock) on `port`, with `stream` (2 shards), once it listens.
    pub fn kinesis_local(port: u16, stream: &str) -> Server {
        Server::start(&format!("kinesis-local {port} {stream}\n"), port, || kinesis_local_command(port, stream))
    }

    /// moto's server on `port`, once it listens.
    pub fn moto(port: u16) -> Server {
        Server::start(&format!("moto {port}\n"), port, || moto_command(port))
    }

    fn start(line: &str, port: u16, command: impl FnOnce() -> Command) -> Server {
        match agent() {
            None => {
                let mut command = command();
                let program = format!("{:?}", command.get_program());
                let child = command.spawn().unwrap_or_else(|e| panic!("starting {program}: {e}"));
                wait_listening(port, &program);
                Server::Local(child)
            }
            Some(agent) => {
                let mut reader = request(&agent, line, &[]);
                let answer = read_line(&mut reader);
                assert_eq!(answer.trim(), "listening", "the guest agent answered {line:?}");
                Server::Remote(reader.into_inner())
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match self {
            Server::Local(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Server::Remote(stream) => {
                // The agent stops the server, then closes its side.
                let _ = stream.shutdown(Shutdown::Write);
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
    }
}

/// Runs `script` with moto's virtualenv python where the servers run (so a script reaches
/// them at 127.0.0.1).
pub fn python(script: &str) -> Output {
    match agent() {
        None => local_python(script),
        Some(agent) => {
            let mut reader = request(&agent, &format!("python {}\n", script.len()), script.as_bytes());
            let head = read_line(&mut reader);
            let fields: Vec<i64> = head.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            let [status, out_len, err_len] = fields[..] else {
                panic!("the guest agent answered python with {head:?}")
            };
            let mut stdout = vec![0; out_len as usize];
            let mut stderr = vec![0; err_len as usize];
            reader.read_exact(&mut stdout).expect("python's output from the guest agent");
            reader.read_exact(&mut stderr).expect("python's errors from the guest agent");
            Output {
                status: std::os::unix::process::ExitStatusExt::from_raw((status as i32 & 0xff) << 8),
                stdout,
                stderr,
            }
        }
    }
}

fn local_python(script: &str) -> Output {
    Command::new(venv_bin().join("python")).arg("-c").arg(script).output().expect("running the virtualenv's python")
}

fn request(agent: &str, line: &str, body: &[u8]) -> BufReader<TcpStream> {
    let mut stream =
        TcpStream::connect(agent).unwrap_or_else(|e| panic!("connecting to the guest agent at {agent}: {e}"));
    stream.write_all(line.as_bytes()).and_then(|()| stream.write_all(body)).expect("writing to the guest agent");
    BufReader::new(stream)
}

fn read_line(reader: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("reading the guest agent's answer");
    line
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kinesis_local_main() -> PathBuf {
    std::env::var_os("KINESIS_LOCAL_MAIN").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xtask/node/node_modules/kinesis-local/main.js")
    })
}

/// The virtualenv's bin directory (moto[server] and boto3).
fn venv_bin() -> PathBuf {
    std::env::var_os("MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xtask/moto"))
        .join("bin")
}

fn kinesis_local_command(port: u16, stream: &str) -> Command {
    let main = kinesis_local_main();
    assert!(main.exists(), "{} is missing: run `cargo xtask setup`", main.display());
    let mut command = Command::new("node");
    command
        .arg(&main)
        // It reads its TLS certificate (server.json) from the working directory.
        .current_dir(main.parent().expect("package dir"))
        .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
        .env("KINESIS_MOCK_TLS_PORT", crate::free_port().to_string())
        .env("INITIALIZE_STREAMS", format!("{stream}:2"))
        .env("CREATE_STREAM_DURATION", "0ms")
        .env("LOG_LEVEL", "WARN")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn moto_command(port: u16) -> Command {
    let server = venv_bin().join("moto_server");
    assert!(server.exists(), "{} is missing: run `cargo xtask setup`", server.display());
    let mut command = Command::new(server);
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
    command
}

/// The agent's side of one connection (`cargo xtask guest-agent`, stdin and stdout joined
/// to the guest's connection by QEMU). A request it cannot serve is answered `error: ...`.
pub fn serve(input: impl Read, mut output: impl Write) -> std::io::Result<()> {
    let mut input = BufReader::new(input);
    let line = read_line(&mut input);
    let words: Vec<&str> = line.split_whitespace().collect();
    let command = match words[..] {
        ["port"] => return writeln!(output, "{}", crate::free_port()),
        ["python", length] => {
            let Ok(length) = length.parse::<usize>() else { return writeln!(output, "error: bad request {line:?}") };
            let mut script = vec![0; length];
            input.read_exact(&mut script)?;
            let run = local_python(&String::from_utf8_lossy(&script));
            writeln!(output, "{} {} {}", run.status.code().unwrap_or(-1), run.stdout.len(), run.stderr.len())?;
            output.write_all(&run.stdout)?;
            return output.write_all(&run.stderr);
        }
        ["kinesis-local", port, stream] => port.parse().map(|port| (port, kinesis_local_command(port, stream))),
        ["moto", port] => port.parse().map(|port| (port, moto_command(port))),
        _ => return writeln!(output, "error: unknown request {line:?}"),
    };
    let Ok((port, mut command)) = command else { return writeln!(output, "error: bad port in {line:?}") };
    let mut child = command.spawn()?;
    wait_listening(port, words[0]);
    writeln!(output, "listening")?;
    output.flush()?;
    // Held until the guest closes the connection (or the guest is gone).
    let _ = input.read_to_end(&mut Vec::new());
    child.kill()?;
    child.wait()?;
    Ok(())
}

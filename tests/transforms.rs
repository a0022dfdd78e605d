//! Transforms end to end, with real writers: rsyslog writing both syslog file formats (fed
//! by util-linux `logger` over UDP), a shell writing CSV from inside a cgroup named as
//! Docker names a container's, and the instance identity read from moto's metadata service.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use collector_tests::{
    Running, Scratch, free_port, moto_server::MotoServer, sample, wait_for_metric, wait_for_records,
};
use serde_json::Value;

/// A flow shipping `paths` to a JSON-lines file sink, with `extra` (transforms) in it.
fn flow(name: &str, path: &Path, out: &Path, extra: &str) -> String {
    format!(
        "\n[[flow]]\nname = \"{name}\"\npaths = [{:?}]\n{extra}\n[flow.sink]\nkind = \"file\"\npath = {:?}\n",
        path.display().to_string(),
        out.display().to_string()
    )
}

fn head(state: &Path) -> String {
    format!("[collector]\nstate_dir = {:?}\nhost = \"test\"\n", state.display().to_string())
}

struct Rsyslog(Child);

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn syslog_files_written_by_rsyslog_become_json_with_their_writer() {
    let scratch = Scratch::new("syslog");
    let (traditional, rfc3339) = (scratch.path("traditional.log"), scratch.path("rfc3339.log"));
    let (out_traditional, out_rfc3339) = (scratch.path("traditional.jsonl"), scratch.path("rfc3339.jsonl"));
    let config = format!(
        "{}{}{}",
        head(&scratch.path("state")),
        flow(
            "traditional",
            &traditional,
            &out_traditional,
            "[[flow.transform]]\nkind = \"log_to_json\"\nformat = \"syslog\"\n[[flow.transform]]\nkind = \"add_writer\"\n"
        ),
        flow(
            "rfc3339",
            &rfc3339,
            &out_rfc3339,
            "[[flow.transform]]\nkind = \"log_to_json\"\nformat = \"rfc3339_syslog\"\n"
        ),
    );
    let _collector = Running::start(&scratch.dir, &config);

    let port = free_port();
    let conf = scratch.path("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory={work:?})\n\
             module(load=\"imudp\")\n\
             input(type=\"imudp\" address=\"127.0.0.1\" port=\"{port}\")\n\
             *.* action(type=\"omfile\" file={traditional:?} template=\"RSYSLOG_TraditionalFileFormat\")\n\
             *.* action(type=\"omfile\" file={rfc3339:?} template=\"RSYSLOG_FileFormat\")\n",
            work = scratch.dir.display().to_string(),
            traditional = traditional.display().to_string(),
            rfc3339 = rfc3339.display().to_string(),
        ),
    )
    .unwrap();
    let pid_file = scratch.path("rsyslogd.pid");
    let rsyslog = Rsyslog(
        Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(&pid_file)
            .stdout(Stdio::null())
            .spawn()
            .expect("rsyslogd (apt package rsyslog, installed by cargo xtask setup)"),
    );
    // rsyslogd is listening once it has written its pid file.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !pid_file.exists() {
        assert!(std::time::Instant::now() < deadline, "rsyslogd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    const MESSAGES: usize = 20;
    for i in 0..MESSAGES {
        let status = Command::new("logger")
            .args(["-n", "127.0.0.1", "-P", &port.to_string(), "-d", "-t", "shipper-test", "--id=4242"])
            .arg(format!("message {i}: disk /dev/nvme0n1 at 91%"))
            .status()
            .expect("logger (util-linux)");
        assert!(status.success());
    }
    for out in [&out_traditional, &out_rfc3339] {
        let records = wait_for_records(out, MESSAGES);
        assert_eq!(records.len(), MESSAGES, "{}: every message once", out.display());
        for (i, r) in records.iter().enumerate() {
            let data = &r["data"];
            assert!(data.is_object(), "a parsed record is embedded as an object: {r}");
            assert_eq!(data["message"], format!("message {i}: disk /dev/nvme0n1 at 91%"), "{r}");
            assert_eq!(
                (data["program"].as_str(), data["processid"].as_str()),
                (Some("shipper-test"), Some("4242")),
                "{r}"
            );
            assert!(data["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{r}");
        }
        let first = records[0]["data"]["timestamp"].as_str().unwrap().to_owned();
        if out == &out_rfc3339 {
            assert!(first.starts_with("20") && first.as_bytes()[10] == b'T' && first.len() > 25, "{first}");
        } else {
            assert_eq!(first.len(), "Nov 28 02:36:38".len(), "{first}");
        }
    }
    // The writer as the kernel saw it: rsyslogd's process (its omfile thread's name).
    let rsyslogd: u64 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let records = wait_for_records(&out_traditional, MESSAGES);
    for r in &records {
        assert_eq!(r["data"]["pid"].as_u64(), Some(rsyslogd), "{r}");
        assert!(r["data"]["comm"].as_str().is_some_and(|c| !c.is_empty()), "{r}");
    }
    drop(rsyslog);
}

#[test]
fn csv_records_carry_the_container_of_the_process_that_wrote_them() {
    let root = cgroup_v2_root();
    let id = "4f1c3c8e0a2b9d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e";
    let cgroup = root.join(format!("collector-test-{}/docker-{id}.scope", std::process::id()));
    std::fs::create_dir_all(&cgroup).expect("creating a cgroup (root, cgroup v2)");
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
            let _ = std::fs::remove_dir(self.0.parent().unwrap());
        }
    }
    let _remove = Remove(cgroup.clone());

    let scratch = Scratch::new("csv");
    let log = scratch.path("audit.csv");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let port = free_port();
    let config = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n{}",
        head(&scratch.path("state")),
        flow(
            "audit",
            &log,
            &out,
            "on_parse_error = \"drop\"\n\
             [[flow.transform]]\nkind = \"csv_to_json\"\nfields = [\"time\", \"user\", \"action\"]\n\
             [[flow.transform]]\nkind = \"add_writer\"\n\
             [[flow.transform]]\nkind = \"add_metadata\"\nmetadata = { env = \"test\", shard = 3 }\n"
        ),
    );
    let _collector = Running::start(&scratch.dir, &config);
    // The shell joins the cgroup, then writes: its writes carry the cgroup's id.
    let script = format!(
        "echo $$ > {procs:?}; \
         printf '%s\\n' '2026-11-28T02:36:38Z,alice,login' 'not,csv,at,all' '2026-11-28T02:36:39Z,\"Doe, Jane\",\"said \"\"hi\"\"\"' >> {log:?}",
        procs = cgroup.join("cgroup.procs").display().to_string(),
        log = log.display().to_string()
    );
    let status = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(status.success());
    let records = wait_for_records(&out, 2);
    assert_eq!(records.len(), 2, "the line that is not CSV of 3 values is dropped: {records:?}");
    let data: Vec<&Value> = records.iter().map(|r| &r["data"]).collect();
    assert_eq!((data[0]["user"].as_str(), data[0]["action"].as_str()), (Some("alice"), Some("login")));
    assert_eq!((data[1]["user"].as_str(), data[1]["action"].as_str()), (Some("Doe, Jane"), Some("said \"hi\"")));
    let cgroup_path = format!("/{}", cgroup.strip_prefix(&root).unwrap().display());
    for d in &data {
        assert_eq!(d["comm"], "sh");
        assert_eq!(d["cgroup"].as_str(), Some(cgroup_path.as_str()), "{d}");
        assert_eq!(d["container_id"], id);
        assert_eq!((d["env"].as_str(), d["shard"].as_i64()), (Some("test"), Some(3)));
    }
    let metrics = wait_for_metric(
        &format!("http://127.0.0.1:{port}"),
        "collector_dropped_records_total{flow=\"audit\",sink=\"file\"}",
        1,
    );
    assert_eq!(
        sample(&metrics, "collector_unparsed_records_total{flow=\"audit\",sink=\"file\"}"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "collector_dropped_records_total{flow=\"audit\",sink=\"file\"}"), Some(1), "{metrics}");
    assert_eq!(
        sample(&metrics, "collector_sent_records_total{flow=\"audit\",sink=\"file\"}"),
        Some(2),
        "dropped is not sent"
    );
}

/// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
fn cgroup_v2_root() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let mut dirs: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1])
        })
        .collect();
    dirs.sort_by_key(|d| d.len());
    dirs.first().map(std::path::PathBuf::from).expect("a cgroup v2 mount (the kernel's cgroup id is a v2 id)")
}

/// moto's IMDS emulation answers the token request without the
/// `X-aws-ec2-metadata-token-ttl-seconds` header that the real service sends and the SDK's
/// client requires: this one-line shim in front of it adds the header (what no real IMDS
/// can be here). Every other byte is moto's.
fn imds_shim(upstream: String) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let token = request.starts_with(b"PUT /latest/api/token");
                // Where moto runs: this host, or the guest's host.
                let Ok(mut server) = std::net::TcpStream::connect(upstream.as_str()) else { return };
                // One request per connection, which moto then closes: its answer is read to the end.
                let text = String::from_utf8_lossy(&request);
                let (line, rest) = text.split_once("\r\n").unwrap_or((&text, ""));
                let headers: String = rest
                    .split("\r\n")
                    .filter(|h| !h.is_empty() && !h.to_ascii_lowercase().starts_with("connection:"))
                    .map(|h| format!("{h}\r\n"))
                    .collect();
                let _ = server.write_all(format!("{line}\r\nConnection: close\r\n{headers}\r\n").as_bytes());
                let mut response = Vec::new();
                let _ = server.read_to_end(&mut response);
                if token && let Some(end) = response.windows(2).position(|w| w == b"\r\n") {
                    response.splice(end + 2..end + 2, b"X-aws-ec2-metadata-token-ttl-seconds: 300\r\n".iter().copied());
                }
                let _ = client.write_all(&response);
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn ec2_identity_comes_from_the_metadata_service_or_start_up_fails() {
    // moto's server answers the IMDSv2 token and meta-data paths as an instance would.
    let moto = MotoServer::start();
    let scratch = Scratch::new("ec2");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let config = format!(
        "{}{}",
        head(&scratch.path("state")),
        flow("app", &log, &out, "[[flow.transform]]\nkind = \"add_ec2_metadata\"\n")
    );
    let path = scratch.path("collector.toml");
    std::fs::write(&path, &config).unwrap();
    {
        let imds = imds_shim(moto.endpoint().trim_start_matches("http://").to_owned());
        let _collector = Running::start_with_env(&path, &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)]);
        std::fs::write(&log, b"GET /healthz 200\n").unwrap();
        let records = wait_for_records(&out, 1);
        let data = &records[0]["data"];
        assert_eq!(data["message"], "GET /healthz 200");
        assert_eq!(
            data["ec2"],
            serde_json::json!({"instanceId": "i-fake", "instanceType": "moto.virtual", "amiId": "ami-moto-virtual",
                               "region": "us-east-1", "availabilityZone": "us-east-1a", "privateIp": "127.0.0.1"})
        );
    }
    // No metadata service: the collector says so and does not start.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let run = Command::new(collector_tests::collector_bin())
        .args(["--attach-mode", &collector_tests::attach_mode(), "run", "--config"])
        .arg(&path)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &closed)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains(&format!("flow `app`: add_ec2_metadata: the instance metadata service at {closed}")),
        "{stderr}"
    );
}

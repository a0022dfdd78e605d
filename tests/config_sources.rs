//! Where a config may come from besides one file: `--config ssm:/name` (SSM Parameter Store,
//! here moto's server: a fleet keeps one config there). Directories and `<stem>.d` merging
//! are unit-tested in the collector (config::tests).

use std::process::Command;

use collector_tests::{Running, Scratch, collector_bin, moto_server::MotoServer, wait_for_records};

#[test]
fn a_config_in_an_ssm_parameter_is_used_and_a_missing_one_is_named() {
    let moto = MotoServer::start();
    let scratch = Scratch::new("ssm");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let config = collector_tests::config(&scratch.path("state"), &[log.display().to_string()], &out, "");
    moto.python(&format!(
        "ssm = boto3.client('ssm', **kw)\n\
         ssm.put_parameter(Name='/collector/app', Type='SecureString', Value={config:?})\n"
    ));
    let env = [
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    {
        let _collector = Running::start_with_env(std::path::Path::new("ssm:/collector/app"), &env);
        std::fs::write(&log, b"from a config kept in SSM\n").unwrap();
        let records = wait_for_records(&out, 1);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["data"], "from a config kept in SSM");
    }
    let run = Command::new(collector_bin())
        .args(["check-config", "--config", "ssm:/collector/nope"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(78), "no such parameter: a config error: {stderr}");
    assert!(stderr.contains("ssm:/collector/nope") && stderr.contains("ParameterNotFound"), "{stderr}");
    // SSM out of reach: a later try may work, so not the status systemd never restarts.
    let closed = collector_tests::servers::endpoint(collector_tests::servers::free_port());
    let unreachable: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| if *k == "AWS_ENDPOINT_URL" { (*k, closed.as_str()) } else { (*k, *v) }).collect();
    let run = Command::new(collector_bin())
        .args(["check-config", "--config", "ssm:/collector/app"])
        .envs(unreachable.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("ssm:/collector/app"), "{stderr}");
}

/// COLLECTOR_CONFIG stands for --config (an environment that cannot change the command
/// line: a container's); a near-miss subcommand is answered with the right one.
#[test]
fn collector_config_names_the_config_and_typos_get_a_suggestion() {
    let scratch = Scratch::new("config-env");
    let path = scratch.path("collector.toml");
    let config = collector_tests::config(&scratch.path("state"), &[scratch.pattern("*.log")], &scratch.path("o"), "");
    std::fs::write(&path, config).unwrap();
    let check = Command::new(collector_bin()).arg("check-config").env("COLLECTOR_CONFIG", &path).output().unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && stdout.starts_with(&format!("{}: ok", path.display())), "{stdout}");
    let typo = Command::new(collector_bin()).arg("check-confg").output().unwrap();
    assert_eq!(typo.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&typo.stderr).contains("a similar subcommand exists: 'check-config'"));
}

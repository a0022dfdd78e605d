//! The Helm chart (deploy/helm/collector) through the real helm (v3.17.3, installed by
//! `cargo xtask setup`): lint, the required stream, the rendered DaemonSet's mounts and
//! capabilities, and its default flow run by the collector: a container's log line under
//! /var/log/pods reaches kinesis-local parsed and labelled with its namespace, pod and container.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use collector_tests::{Running, Scratch, collector_bin, kinesis_server::KinesisServer};
use serde_json::Value;

fn venv() -> PathBuf {
    std::env::var_os("HELM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xtask/helm"))
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/collector")
}

/// `helm <args> <chart>`: (success, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    let bin = venv().join("bin/helm");
    assert!(bin.exists(), "{} is missing: run `cargo xtask setup`", bin.display());
    let out = Command::new(bin).args(args).output().expect("helm");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The manifests `helm template` renders with `sets`, as JSON objects by kind.
fn render(sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "logs"];
    let chart = chart();
    args.push(chart.to_str().unwrap());
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, yaml, err) = helm(&args);
    assert!(ok, "helm template failed: {err}");
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(yaml.as_bytes())?;
            child.wait_with_output()
        })
        .expect("python with PyYAML");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("rendered YAML ({e}):\n{yaml}"))
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} rendered"))
}

#[test]
fn the_chart_lints_and_refuses_to_render_without_a_stream() {
    let chart = chart();
    let (ok, out, err) = helm(&["lint", chart.to_str().unwrap(), "--set", "sink.stream=app-logs"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = helm(&["template", "logs", chart.to_str().unwrap()]);
    assert!(!ok && err.contains("sink.stream (or config) is required"), "{err}");
}

#[test]
fn the_daemonset_mounts_what_the_kernel_programs_need_with_only_their_capabilities() {
    let docs = render(&[
        "sink.stream=app-logs",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/log-shipper",
    ]);
    let account = of_kind(&docs, "ServiceAccount");
    assert_eq!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/log-shipper"
    );
    let ds = of_kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    let container = &pod["containers"][0];
    let caps = &container["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    assert_eq!(caps["add"], serde_json::json!(["BPF", "PERFMON", "DAC_READ_SEARCH", "SYS_RESOURCE", "SYS_PTRACE"]));
    assert_eq!(container["securityContext"]["privileged"], false);
    let host_paths: Vec<&str> =
        pod["volumes"].as_array().unwrap().iter().filter_map(|v| v["hostPath"]["path"].as_str()).collect();
    for path in
        ["/var/log", "/var/lib/collector", "/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/bpf", "/sys/fs/cgroup"]
    {
        assert!(host_paths.contains(&path), "{path} mounted from the node: {host_paths:?}");
    }
    let mounts = container["volumeMounts"].as_array().unwrap();
    let varlog = mounts.iter().find(|m| m["mountPath"] == "/var/log").unwrap();
    assert_eq!(varlog["readOnly"], true, "logs are only read");
    assert_eq!(container["ports"][0]["containerPort"], 9108);
    // A sink that is down makes the pod unready, never restarts it.
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/live");
}

#[test]
fn the_default_flow_ships_a_pods_log_parsed_with_its_kubernetes_names() {
    let scratch = Scratch::new("helm");
    let server = KinesisServer::start("pods");
    let port = collector_tests::free_port();
    let state = scratch.path("state");
    let docs = render(&[
        "sink.stream=pods",
        "sink.region=us-east-1",
        &format!("stateDir={}", state.display()),
        &format!("metrics.listen=127.0.0.1:{port}"),
        "extraConfigs.node\\.toml=[[flow]]\nname = \"node\"\npaths = [\"/var/log/collector-helm-test-none.log\"]\n[flow.sink]\nkind = \"null\"\n",
    ]);
    // The ConfigMap as the pod sees it: a directory of TOML files.
    let config_dir = scratch.path("etc-collector");
    std::fs::create_dir_all(&config_dir).unwrap();
    for (name, text) in of_kind(&docs, "ConfigMap")["data"].as_object().unwrap() {
        std::fs::write(config_dir.join(name), text.as_str().unwrap()).unwrap();
    }
    let check = Command::new(collector_bin())
        .args(["check-config", "--config"])
        .arg(&config_dir)
        .env("NODE_NAME", "node-7")
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&check.stdout).contains("(2 flows)"));

    // A container's log where the kubelet puts it.
    let pod_dir = PathBuf::from(format!(
        "/var/log/pods/shop_web-7d9f-{}_0f6e2c1a-9b7d-4c1e-8a2b-3c4d5e6f7a8b",
        std::process::id()
    ));
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _remove = Remove(pod_dir.clone());
    std::fs::create_dir_all(pod_dir.join("nginx")).unwrap();
    let log = pod_dir.join("nginx/0.log");
    std::fs::write(&log, b"").unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", server.endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        // As the DaemonSet sets it from spec.nodeName.
        ("NODE_NAME", "node-7".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _collector = Running::start_with_env(&config_dir, &env);
    std::fs::write(&log, b"2026-11-28T02:36:38.123456789Z stdout F GET /cart 200 12ms\n").unwrap();
    let records: Vec<Value> =
        server.wait_for_records(1).into_iter().filter(|r| r["path"] == log.display().to_string()).collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let data = &records[0]["data"];
    assert_eq!((data["stream"].as_str(), data["message"].as_str()), (Some("stdout"), Some("GET /cart 200 12ms")));
    let k = &data["kubernetes"];
    assert_eq!((k["namespace"].as_str(), k["container"].as_str()), (Some("shop"), Some("nginx")));
    assert_eq!(k["pod"].as_str(), Some(format!("web-7d9f-{}", std::process::id()).as_str()));
    assert_eq!(k["pod_uid"], "0f6e2c1a-9b7d-4c1e-8a2b-3c4d5e6f7a8b");
    assert_eq!(records[0]["host"], "node-7", "records name the node, which outlives the pod");
}

/// What an operator sets for a real cluster reaches the pod: env and envFrom (after
/// NODE_NAME, which the chart's config needs), pull secrets, extra volumes and mounts,
/// affinity; and a PodMonitor when asked for, scraping the metrics port. None of it is
/// rendered by default.
#[test]
fn the_pod_takes_env_secrets_volumes_affinity_and_a_pod_monitor() {
    let defaults = render(&["sink.stream=app-logs"]);
    let pod = &of_kind(&defaults, "DaemonSet")["spec"]["template"]["spec"];
    assert!(pod["imagePullSecrets"].is_null() && pod["affinity"].is_null(), "{pod}");
    assert!(pod["containers"][0]["envFrom"].is_null());
    assert!(!defaults.iter().any(|d| d["kind"] == "PodMonitor"), "no PodMonitor unless enabled");

    let docs = render(&[
        "sink.stream=app-logs",
        "env[0].name=STREAM,env[0].value=app-logs",
        "envFrom[0].secretRef.name=collector-env",
        "imagePullSecrets[0].name=regcred",
        "extraVolumes[0].name=apps,extraVolumes[0].hostPath.path=/srv/logs",
        "extraVolumeMounts[0].name=apps,extraVolumeMounts[0].mountPath=/srv/logs,extraVolumeMounts[0].readOnly=true",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=kubernetes.io/os",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=In",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values[0]=linux",
        "podMonitor.enabled=true",
        "podMonitor.labels.release=prometheus",
    ]);
    let ds = of_kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env: Vec<&str> = container["env"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(env, ["NODE_NAME", "STREAM"]);
    assert_eq!(container["envFrom"], serde_json::json!([{"secretRef": {"name": "collector-env"}}]));
    assert_eq!(pod["imagePullSecrets"], serde_json::json!([{"name": "regcred"}]));
    assert!(
        pod["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "apps" && v["hostPath"]["path"] == "/srv/logs")
    );
    let mount =
        container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "apps").expect("the extra mount");
    assert_eq!((mount["mountPath"].as_str(), mount["readOnly"].as_bool()), (Some("/srv/logs"), Some(true)));
    let term =
        &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0];
    assert_eq!(term["matchExpressions"][0]["values"], serde_json::json!(["linux"]));
    let monitor = of_kind(&docs, "PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["selector"]["matchLabels"], ds["spec"]["selector"]["matchLabels"]);
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    let chart = chart();
    let (ok, out, err) =
        helm(&["lint", chart.to_str().unwrap(), "--set", "sink.stream=app-logs,podMonitor.enabled=true"]);
    assert!(ok, "{out}{err}");
}

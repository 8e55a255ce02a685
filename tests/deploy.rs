//! The deploy files agree with procwatch and with each other: every config shipped passes
//! `procwatch --check-config`, the compose file mounts files that exist, and the Kubernetes
//! objects point at each other and at endpoints procwatch serves.

mod util;

use std::path::{Path, PathBuf};

use serde_json::Value;
use util::{marker, run_to_end};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn yaml(text: &str, what: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn check_config(text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("procwatch.yaml");
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) = run_to_end(
        &["--check-config", "--config", path.to_str().unwrap()],
        dir.path(),
        &marker("deploy"),
    );
    assert_eq!(code, 0, "{what} is not a valid procwatch config:\n{stderr}");
    assert!(stdout.contains("config OK"), "{stdout}");
}

#[test]
fn shipped_configs_pass_check_config() {
    check_config(
        &std::fs::read_to_string(repo("deploy/procwatch.example.yaml")).unwrap(),
        "deploy/procwatch.example.yaml",
    );
    let cm = yaml(
        &std::fs::read_to_string(repo("deploy/kubernetes/configmap.yaml")).unwrap(),
        "configmap",
    );
    check_config(
        cm["data"]["procwatch.yaml"].as_str().unwrap(),
        "the ConfigMap's procwatch.yaml",
    );
}

#[test]
fn compose_mounts_files_that_exist() {
    let compose = yaml(
        &std::fs::read_to_string(repo("deploy/docker-compose.yml")).unwrap(),
        "compose",
    );
    let services = compose["services"].as_object().unwrap();
    for name in ["procwatch", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name}");
    }
    for (name, svc) in services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            assert!(
                repo("deploy").join(src).exists(),
                "{name} mounts {src}, which does not exist"
            );
        }
    }
    let build = &services["procwatch"]["build"];
    assert!(
        repo("deploy")
            .join(build["context"].as_str().unwrap())
            .join(build["dockerfile"].as_str().unwrap())
            .is_file()
    );
}

#[test]
fn kubernetes_objects_fit_together() {
    let load = |f: &str| {
        yaml(
            &std::fs::read_to_string(repo(&format!("deploy/kubernetes/{f}"))).unwrap(),
            f,
        )
    };
    let ds = load("daemonset.yaml");
    let svc = load("service.yaml");
    let pm = load("podmonitor.yaml");
    let cm = load("configmap.yaml");
    assert_eq!(ds["kind"], "DaemonSet");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&ds["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&svc["spec"]["selector"], labels);
    assert_eq!(&pm["spec"]["selector"]["matchLabels"], labels);
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let port = &container["ports"][0];
    assert_eq!(port["containerPort"], 9407);
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], port["name"]);
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/-/ready");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/-/healthy");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--web.enable-lifecycle"),
        "the config reloader needs POST /-/reload"
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
        cm["metadata"]["name"]
    );
}

#[test]
fn the_daemonsets_args_are_flags_procwatch_accepts() {
    let ds = yaml(
        &std::fs::read_to_string(repo("deploy/kubernetes/daemonset.yaml")).unwrap(),
        "daemonset",
    );
    let cm = yaml(
        &std::fs::read_to_string(repo("deploy/kubernetes/configmap.yaml")).unwrap(),
        "configmap",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("procwatch.yaml");
    std::fs::write(&config, cm["data"]["procwatch.yaml"].as_str().unwrap()).unwrap();
    // The container's args as they are, the config path pointed at the ConfigMap's text, and
    // every --no-collector flag besides: each must parse.
    let mut args: Vec<String> = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .map(|a| {
            if a.starts_with("--config=") {
                format!("--config={}", config.display())
            } else {
                a
            }
        })
        .collect();
    args.extend(
        procwatch::metrics::Group::ALL
            .iter()
            .map(|g| format!("--no-collector.{}", g.as_str())),
    );
    args.push("--check-config".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = run_to_end(&args, dir.path(), &marker("daemonset"));
    assert_eq!(code, 0, "{args:?}:\n{stdout}{stderr}");
}

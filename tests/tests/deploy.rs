//! Deployment files and the README's first run: the systemd units verify
//! and are hardened, the Nomad job parses and uses only real flags and
//! keys, and the README's run command serves, produces, consumes, stops
//! cleanly on SIGTERM and keeps its data.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use proglog_tests::{eventually, free_port, proglog, proglog_bin, workspace};

/// `deploy/systemd/check.sh`: `systemd-analyze verify` on both units and
/// `systemd-analyze security` at most 2.0. `.ci/test` installs systemd;
/// without `systemd-analyze` the test says so loudly and passes.
#[test]
fn systemd_units_verify_and_are_hardened() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "\n!!! SKIPPED systemd_units_verify_and_are_hardened: systemd-analyze is not \
             installed (apt-get install systemd; .ci/test does) !!!\n"
        );
        return;
    }
    let out = Command::new(workspace().join("deploy/systemd/check.sh"))
        .arg(proglog_bin())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check.sh failed:\n{text}");
    for unit in ["proglog.service", "proglog@node1.service"] {
        assert!(text.contains(&format!("verify   {unit}: ok")), "{text}");
        let exposure: f64 = text
            .lines()
            .find(|l| l.starts_with(&format!("security {unit}: exposure ")))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|e| e.parse().ok())
            .unwrap_or_else(|| panic!("no exposure for {unit}:\n{text}"));
        assert!(exposure <= 2.0, "{unit}: exposure {exposure}");
    }
}

/// The `--flags` `proglog agent --help` lists.
fn agent_flags() -> BTreeSet<String> {
    let out = proglog(&["agent", "--help"], "");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .to_string()
        })
        .collect()
}

/// Every block named `name` anywhere under `body`.
fn blocks<'a>(body: &'a hcl::Body, name: &str, found: &mut Vec<&'a hcl::Block>) {
    for block in body.blocks() {
        if block.identifier() == name {
            found.push(block);
        }
        blocks(block.body(), name, found);
    }
}

/// The text of a string or heredoc attribute (templates unevaluated).
fn text(expr: &hcl::Expression) -> String {
    match expr {
        hcl::Expression::String(s) => s.clone(),
        hcl::Expression::TemplateExpr(t) => t.to_string(),
        other => panic!("expected a string, found {other:?}"),
    }
}

/// The config keys a rendered TOML template sets: `key = ...` lines, with
/// consul-template `{{ ... }}` actions removed first.
fn template_keys(template: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        plain.push_str(&rest[..start]);
        rest = rest[start..]
            .find("}}")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    plain.push_str(rest);
    plain
        .lines()
        .filter_map(|line| {
            let (key, _) = line.trim().split_once('=')?;
            let key = key.trim();
            (!key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                .then(|| key.to_string())
        })
        .collect()
}

#[test]
fn the_nomad_job_parses_and_uses_only_real_flags_and_keys() {
    let path = workspace().join("deploy/nomad/proglog.nomad.hcl");
    let body: hcl::Body = hcl::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let flags = agent_flags();
    assert!(flags.contains("config-file") && flags.contains("retention-bytes"));
    // config/proglog.toml documents every Config key (a unit test of the
    // agent checks that): a key it does not name does not exist.
    let example = std::fs::read_to_string(workspace().join("config/proglog.toml")).unwrap();

    let mut jobs = Vec::new();
    blocks(&body, "job", &mut jobs);
    assert_eq!(jobs.len(), 1);
    let job_type = jobs[0].body().attributes().find(|a| a.key() == "type");
    assert_eq!(
        job_type.map(|a| text(a.expr())).as_deref(),
        Some("system"),
        "one agent per client node"
    );

    let mut configs = Vec::new();
    blocks(&body, "config", &mut configs);
    let args = configs
        .iter()
        .flat_map(|c| c.body().attributes())
        .find(|a| a.key() == "args")
        .expect("the task passes args");
    let hcl::Expression::Array(args) = args.expr() else {
        panic!("args is a list");
    };
    let args: Vec<String> = args.iter().map(text).collect();
    assert_eq!(args[0], "agent");
    for arg in &args {
        if let Some(flag) = arg.strip_prefix("--") {
            assert!(
                flags.contains(flag),
                "--{flag} is not a flag of proglog agent"
            );
        }
    }

    let mut templates = Vec::new();
    blocks(&body, "template", &mut templates);
    let attr = |b: &hcl::Block, k: &str| {
        b.body()
            .attributes()
            .find(|a| a.key() == k)
            .map(|a| text(a.expr()))
    };
    let config = templates
        .iter()
        .find(|t| attr(t, "destination").is_some_and(|d| d.ends_with("proglog.toml")))
        .expect("a template renders proglog.toml");
    let keys = template_keys(&attr(config, "data").unwrap());
    for key in [
        "bind_addr",
        "rpc_port",
        "metrics_addr",
        "bootstrap",
        "start_join_addrs",
    ] {
        assert!(
            keys.iter().any(|k| k == key),
            "{key} not rendered: {keys:?}"
        );
    }
    for key in &keys {
        assert!(
            example.contains(&format!("\n{key} =")) || example.contains(&format!("# {key} =")),
            "{key} is not a config key"
        );
        let flag = key.replace('_', "-");
        assert!(flags.contains(&flag), "{key}: no --{flag} flag");
    }
    // Certificates and the policy reload on SIGHUP, not by a restart.
    for t in &templates {
        let dest = attr(t, "destination").unwrap();
        if dest.ends_with(".pem") || dest.ends_with(".csv") || dest.ends_with(".toml") {
            assert_eq!(attr(t, "change_mode").as_deref(), Some("signal"), "{dest}");
            assert_eq!(
                attr(t, "change_signal").as_deref(),
                Some("SIGHUP"),
                "{dest}"
            );
        }
    }
    let mut ports = Vec::new();
    blocks(&body, "port", &mut ports);
    let ports: BTreeSet<&str> = ports
        .iter()
        .flat_map(|p| p.labels().iter().map(|l| l.as_str()))
        .collect();
    assert_eq!(ports, BTreeSet::from(["gossip", "metrics", "rpc"]));
}

/// An agent started as the README's first command starts it, in a copy of
/// the checkout's `config/`, with the ports moved by `PROGLOG_*` so the
/// test does not collide with anything on 8400.
struct ReadmeAgent {
    child: std::process::Child,
}

impl ReadmeAgent {
    fn start(dir: &Path, rpc: u16, gossip: u16) -> ReadmeAgent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .unwrap();
        let child = Command::new(proglog_bin())
            .args(["agent", "--config-file", "config/local.toml"])
            .env("PROGLOG_RPC_PORT", rpc.to_string())
            .env("PROGLOG_BIND_ADDR", format!("127.0.0.1:{gossip}"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        ReadmeAgent { child }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        use rustix::process::{kill_process, Pid, Signal};
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        kill_process(pid, Signal::TERM).unwrap();
        eventually("the agent to exit", Duration::from_secs(60), || {
            self.child.try_wait().unwrap()
        })
    }
}

impl Drop for ReadmeAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_readme_agent_serves_stops_on_sigterm_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("config")).unwrap();
    for f in ["local.toml", "model.conf", "policy.csv"] {
        std::fs::copy(workspace().join("config").join(f), d.join("config").join(f)).unwrap();
    }
    // `proglog certs --dir certs`, as the README runs it, says what it wrote.
    let out = Command::new(proglog_bin())
        .args(["certs", "--dir", "certs"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("root-client.pem"));

    let (rpc, gossip) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{rpc}");
    let cert = |f: &str| d.join("certs").join(f).display().to_string();
    let tls = [
        "--addr".to_string(),
        addr.clone(),
        "--tls-ca-file".into(),
        cert("ca.pem"),
        "--tls-cert-file".into(),
        cert("root-client.pem"),
        "--tls-key-file".into(),
        cert("root-client-key.pem"),
    ];
    let run = |cmd: &str, extra: &[&str], stdin: &str| {
        let mut args = vec![cmd];
        args.extend(tls.iter().map(String::as_str));
        args.extend(extra);
        proglog(&args, stdin)
    };

    let mut agent = ReadmeAgent::start(d, rpc, gossip);
    eventually("the agent to serve", Duration::from_secs(60), || {
        run("servers", &[], "").status.success().then_some(())
    });
    let out = run("produce", &["hello", "world"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n1\n");
    let out = run("consume", &["--json"], "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"offset\":0,\"value\":\"hello\"}\n{\"offset\":1,\"value\":\"world\"}\n",
        "the README's --json example"
    );
    // Without the TLS flags the CLI says the agent wants them.
    let out = proglog(&["consume", "--addr", &addr], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("wants TLS"), "{err}");
    // Past the end: said, and a failure.
    let out = run("consume", &["--from", "7"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("OUT_OF_RANGE"));

    let status = agent.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");

    let mut agent = ReadmeAgent::start(d, rpc, gossip);
    let records = eventually(
        "the restarted agent to serve",
        Duration::from_secs(60),
        || {
            let out = run("consume", &[], "");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && !text.is_empty()).then_some(text)
        },
    );
    assert_eq!(records, "hello\nworld\n", "data intact after restart");
    assert_eq!(agent.terminate().code(), Some(0));
}

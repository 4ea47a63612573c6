//! Config precedence and error messages (figment's Jail isolates env and
//! files per test).

// figment's Jail returns its own (large) error type; that is its API.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use figment::Jail;

use super::{AgentFlags, Config};

fn dev_flags() -> AgentFlags {
    AgentFlags {
        dev: true,
        ..AgentFlags::default()
    }
}

#[test]
fn file_then_env_then_flags_take_precedence() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "proglog.toml",
            "dev = true\nrpc_port = 1111\nnode_name = \"from-file\"\nmax_record_bytes = 10\nlog_level = \"debug\"\n",
        )?;
        jail.set_env("PROGLOG_RPC_PORT", "2222");
        jail.set_env("PROGLOG_NODE_NAME", "from-env");
        let flags = AgentFlags {
            config_file: Some("proglog.toml".into()),
            rpc_port: Some(3333),
            ..AgentFlags::default()
        };
        let config = Config::load(&flags).map_err(|e| e.to_string())?;
        assert_eq!(config.rpc_port, 3333, "flag beats env and file");
        assert_eq!(config.node_name, "from-env", "env beats file");
        assert_eq!(config.max_record_bytes, 10, "file beats default");
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.unix_socket_mode, "0660", "default stays");
        assert_eq!(config.produce_timeout().unwrap(), Duration::from_secs(5));
        Ok(())
    });
}

#[test]
fn an_unknown_key_is_named() {
    Jail::expect_with(|jail| {
        jail.create_file("proglog.toml", "dev = true\nrpc_prot = 1\n")?;
        let flags = AgentFlags {
            config_file: Some("proglog.toml".into()),
            ..AgentFlags::default()
        };
        let err = Config::load(&flags).unwrap_err().to_string();
        assert!(err.contains("rpc_prot"), "{err}");
        Ok(())
    });
}

#[test]
fn unknown_env_variables_are_ignored_and_reported_but_unknown_file_keys_fail() {
    Jail::expect_with(|jail| {
        jail.set_env("PROGLOG_BIN", "/usr/local/bin/proglog");
        jail.set_env("PROGLOG_ADDR", "127.0.0.1:8400");
        jail.set_env("PROGLOG_RPC_PORT", "2222");
        let config = Config::load(&dev_flags()).map_err(|e| e.to_string())?;
        assert_eq!(config.rpc_port, 2222, "known variables still apply");
        assert_eq!(
            super::ignored_env_vars(),
            vec!["PROGLOG_ADDR".to_string(), "PROGLOG_BIN".to_string()]
        );

        jail.create_file("proglog.toml", "dev = true\nbin = \"x\"\n")?;
        let flags = AgentFlags {
            config_file: Some("proglog.toml".into()),
            ..AgentFlags::default()
        };
        let err = Config::load(&flags).unwrap_err().to_string();
        assert!(err.contains("bin"), "{err}");
        Ok(())
    });
}

#[test]
fn a_bad_value_names_key_and_value() {
    Jail::expect_with(|jail| {
        jail.set_env("PROGLOG_RPC_PORT", "seventy");
        let err = Config::load(&dev_flags()).unwrap_err().to_string();
        assert!(err.contains("rpc_port"), "{err}");
        assert!(err.contains("seventy"), "{err}");
        Ok(())
    });
}

#[test]
fn a_bad_file_value_overridden_by_a_flag_is_fine() {
    Jail::expect_with(|jail| {
        jail.create_file("proglog.toml", "dev = true\nunix_socket_mode = \"999\"\n")?;
        let flags = AgentFlags {
            config_file: Some("proglog.toml".into()),
            unix_socket_mode: Some("0600".into()),
            ..dev_flags()
        };
        let config = Config::load(&flags).map_err(|e| e.to_string())?;
        assert_eq!(config.unix_mode().unwrap(), 0o600);
        Ok(())
    });
}

#[test]
fn validation_names_the_key_and_reason() {
    Jail::expect_with(|_| {
        let cases: Vec<(AgentFlags, &str)> = vec![
            (AgentFlags::default(), "server_tls_cert_file"),
            (
                AgentFlags {
                    unix_socket: Some("/tmp/x.sock".into()),
                    ..dev_flags()
                },
                "unix_socket_subject",
            ),
            (
                AgentFlags {
                    unix_socket_mode: Some("rwx".into()),
                    ..dev_flags()
                },
                "unix_socket_mode",
            ),
            (
                AgentFlags {
                    max_record_bytes: Some(0),
                    ..dev_flags()
                },
                "max_record_bytes",
            ),
            (
                AgentFlags {
                    log_level: Some("[[[".into()),
                    ..dev_flags()
                },
                "log_level",
            ),
            (
                AgentFlags {
                    produce_timeout: Some("0s".into()),
                    ..dev_flags()
                },
                "produce_timeout",
            ),
            (
                AgentFlags {
                    produce_timeout: Some("soon".into()),
                    ..dev_flags()
                },
                "produce_timeout",
            ),
            (
                AgentFlags {
                    max_producers: Some(0),
                    ..dev_flags()
                },
                "max_producers",
            ),
            (
                AgentFlags {
                    config_file: Some("missing.toml".into()),
                    ..dev_flags()
                },
                "missing.toml",
            ),
        ];
        for (flags, key) in cases {
            let err = Config::load(&flags).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        Ok(())
    });
}

#[test]
fn the_example_config_file_parses_and_documents_every_key() {
    let text = include_str!("../../../config/proglog.toml");
    let example: Config = toml_like(text);
    assert_eq!(
        example,
        Config {
            node_name: example.node_name.clone(),
            ..Config::default()
        }
    );
    let defaults = serde_json::to_value(Config::default()).unwrap();
    for key in defaults.as_object().unwrap().keys() {
        assert!(
            text.contains(&format!("{key} =")) || text.contains(&format!("# {key} =")),
            "config/proglog.toml lacks {key}"
        );
    }
}

fn toml_like(text: &str) -> Config {
    use figment::providers::{Format, Serialized, Toml};
    figment::Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(text))
        .extract()
        .unwrap()
}

#[test]
fn the_advertised_address_is_dialable() {
    let bound: std::net::SocketAddr = "127.0.0.1:8400".parse().unwrap();
    let config = Config::default();
    assert_eq!(config.advertise_addr(bound), "127.0.0.1:8400");
    // A wildcard bind advertises an interface address, never 0.0.0.0.
    let wildcard: std::net::SocketAddr = "0.0.0.0:8400".parse().unwrap();
    let advertised: std::net::SocketAddr = config.advertise_addr(wildcard).parse().unwrap();
    assert!(!advertised.ip().is_unspecified(), "{advertised}");
    assert_eq!(advertised.port(), 8400);
    let set = Config {
        advertise_addr: Some("node1.example:9400".into()),
        ..Config::default()
    };
    assert_eq!(set.advertise_addr(wildcard), "node1.example:9400");
}

#[test]
fn addresses_must_be_host_and_port() {
    for (key, bad) in [
        ("advertise_addr", "no-port"),
        ("advertise_addr", "host:0"),
        ("start_join_addrs", ":8400"),
        ("start_join_addrs", "host:99999"),
    ] {
        let mut config = Config {
            dev: true,
            ..Config::default()
        };
        match key {
            "advertise_addr" => config.advertise_addr = Some(bad.into()),
            _ => config.start_join_addrs = vec![bad.into()],
        }
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(bad), "{err}");
    }
}

#[test]
fn reap_timeout_and_gossip_key_file_are_checked() {
    let dev = Config {
        dev: true,
        ..Config::default()
    };
    assert_eq!(
        dev.reap_timeout().unwrap(),
        std::time::Duration::from_secs(72 * 3600)
    );
    for bad in ["0s", "soon"] {
        let config = Config {
            reap_timeout: bad.into(),
            ..dev.clone()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("reap_timeout") && err.contains(bad), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("gossip.key");
    std::fs::write(&key, "c2hvcnQ=\n").unwrap();
    let config = Config {
        gossip_key_file: Some(key.clone()),
        ..dev.clone()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("gossip_key_file") && err.contains("gossip.key"),
        "{err}"
    );
    std::fs::write(&key, "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n").unwrap();
    config.validate().unwrap();
}

#[test]
fn telemetry_keys_are_checked() {
    let ratio = Config {
        dev: true,
        trace_sample_ratio: 1.5,
        ..Config::default()
    };
    let err = ratio.validate().unwrap_err().to_string();
    assert!(err.contains("trace_sample_ratio"), "{err}");
    let endpoint = Config {
        dev: true,
        otlp_endpoint: Some("127.0.0.1:4317".into()),
        ..Config::default()
    };
    let err = endpoint.validate().unwrap_err().to_string();
    assert!(
        err.contains("otlp_endpoint") && err.contains("http://"),
        "{err}"
    );
    // The exporter has no TLS: refused here, not at start.
    let tls = Config {
        dev: true,
        otlp_endpoint: Some("https://collector.example:4317".into()),
        ..Config::default()
    };
    let err = tls.validate().unwrap_err().to_string();
    assert!(
        err.contains("otlp_endpoint")
            && err.contains("https://collector.example:4317")
            && err.contains("local collector")
            && err.contains("http://127.0.0.1:4317"),
        "{err}"
    );
    let plain = Config {
        dev: true,
        otlp_endpoint: Some("http://127.0.0.1:4317".into()),
        ..Config::default()
    };
    plain.validate().unwrap();
}

#[test]
fn byte_sizes_take_units_in_the_file_and_the_environment() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "proglog.toml",
            "dev = true\nretention_bytes = \"10GiB\"\nsegment_max_store_bytes = 1048576\n",
        )?;
        jail.set_env("PROGLOG_MAX_RECORD_BYTES", "2MiB");
        jail.set_env("PROGLOG_SNAPSHOT_THRESHOLD_BYTES", "4096");
        let flags = AgentFlags {
            config_file: Some("proglog.toml".into()),
            segment_max_index_bytes: Some(crate::units::parse_bytes("1MiB").unwrap()),
            ..AgentFlags::default()
        };
        let config = Config::load(&flags).map_err(|e| e.to_string())?;
        assert_eq!(config.retention_bytes, 10 << 30);
        assert_eq!(config.segment_max_store_bytes, 1 << 20);
        assert_eq!(config.max_record_bytes, 2 << 20);
        assert_eq!(config.snapshot_threshold_bytes, 4096);
        assert_eq!(config.segment_max_index_bytes, 1 << 20);

        jail.set_env("PROGLOG_RETENTION_BYTES", "10 parsecs");
        let err = Config::load(&flags).unwrap_err().to_string();
        assert!(err.contains("retention_bytes"), "{err}");
        assert!(err.contains("10 parsecs"), "{err}");
        Ok(())
    });
}

#[test]
fn the_local_three_node_configs_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let certs = tempfile::tempdir().unwrap();
    crate::certs::generate(
        certs.path(),
        &["127.0.0.1".to_string(), "localhost".to_string()],
    )
    .unwrap();
    let mut names = Vec::new();
    let mut ports = Vec::new();
    for n in 1..=3 {
        let file = root.join(format!("config/node{n}.toml"));
        let text = std::fs::read_to_string(&file).unwrap();
        // The files name certs/ and config/ relative to the checkout: run
        // them from a copy whose certs/ holds freshly generated ones.
        Jail::expect_with(|jail| {
            let dir = jail.directory().to_path_buf();
            std::fs::create_dir_all(dir.join("config")).unwrap();
            for f in ["model.conf", "policy.csv"] {
                std::fs::copy(root.join("config").join(f), dir.join("config").join(f)).unwrap();
            }
            std::fs::create_dir_all(dir.join("certs")).unwrap();
            for f in crate::certs::FILES {
                std::fs::copy(certs.path().join(f), dir.join("certs").join(f)).unwrap();
            }
            jail.create_file("node.toml", &text)?;
            let flags = AgentFlags {
                config_file: Some("node.toml".into()),
                ..AgentFlags::default()
            };
            let config = Config::load(&flags).map_err(|e| format!("{}: {e}", file.display()))?;
            assert!(!config.dev);
            assert_eq!(config.bootstrap, n == 1, "only node1 bootstraps");
            assert!(
                n == 1 || config.start_join_addrs == ["127.0.0.1:8401"],
                "node{n} joins through node1's gossip address"
            );
            assert!(config.peer_tls_cert_file.is_some(), "peers use TLS");
            names.push(config.node_name.clone());
            ports.push(config.rpc_port);
            ports.push(config.bind_addr.port());
            ports.extend(config.metrics_addr.map(|a| a.port()));
            Ok(())
        });
    }
    names.dedup();
    assert_eq!(names.len(), 3, "distinct node names: {names:?}");
    let count = ports.len();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), count, "no port used twice: {ports:?}");
}

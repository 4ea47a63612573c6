# proglog as a Nomad system job: one agent on every eligible client node.
# See deploy/nomad/README.md for the prerequisites (binary, host volume,
# Nomad Variables with the certificates, Consul for the health check) and
# how a fresh job forms one cluster.

variable "datacenters" {
  description = "Datacenters to run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "join_addrs" {
  description = "Gossip addresses (host:8401) of some or all client nodes: each agent joins the cluster through the first that answers. The node with meta proglog_bootstrap = \"true\" founds the cluster, after checking that none of these belongs to one already."
  type        = list(string)
}

variable "binary" {
  description = "Path of the proglog binary on the client nodes."
  type        = string
  default     = "/usr/local/bin/proglog"
}

job "proglog" {
  type        = "system"
  datacenters = var.datacenters

  # One node at a time: a restarted agent rejoins (same data dir, same
  # address) before the next one stops, so the cluster keeps a quorum.
  update {
    max_parallel     = 1
    min_healthy_time = "30s"
    healthy_deadline = "5m"
  }

  group "proglog" {
    network {
      # Static: the Raft membership records each node's RPC address and
      # gossip reconnects to a restarted node at its old one.
      port "rpc" {
        static = 8400
      }
      port "gossip" {
        static = 8401
      }
      port "metrics" {
        static = 8402
      }
    }

    # The data dir outlives allocations: a client host volume (see README).
    volume "data" {
      type   = "host"
      source = "proglog"
    }

    restart {
      attempts = 3
      interval = "5m"
      delay    = "10s"
      mode     = "fail"
    }

    service {
      name     = "proglog"
      port     = "rpc"
      provider = "consul"
      tags     = ["grpc"]

      # grpc.health.v1 on the RPC port: SERVING while the node serves,
      # NOT_SERVING after a storage failure. The port wants mutual TLS:
      # Consul presents its own certificate with
      # enable_agent_tls_for_checks = true (README).
      check {
        name            = "grpc health"
        type            = "grpc"
        port            = "rpc"
        interval        = "10s"
        timeout         = "3s"
        grpc_use_tls    = true
        tls_skip_verify = true
      }
    }

    service {
      name     = "proglog-metrics"
      port     = "metrics"
      provider = "consul"
      tags     = ["prometheus"]

      check {
        name     = "ready"
        type     = "http"
        port     = "metrics"
        path     = "/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "agent" {
      driver = "exec"

      config {
        command = var.binary
        args    = ["agent", "--config-file", "${NOMAD_TASK_DIR}/proglog.toml"]
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/proglog"
      }

      # The agent drains on SIGTERM: hand-off (12 s), leave (10 s), drain
      # (10 s), sync. Nomad's default 5 s would cut it short.
      kill_signal  = "SIGTERM"
      kill_timeout = "60s"

      # The agent's config. A change sends SIGHUP: certificates, the ACL
      # policy, log_level and max_record_bytes reload live; other keys
      # apply at the next restart.
      template {
        destination   = "local/proglog.toml"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          node_name = "{{ env "node.unique.name" }}"
          data_dir = "/var/lib/proglog"
          bind_addr = "{{ env "NOMAD_IP_gossip" }}:{{ env "NOMAD_PORT_gossip" }}"
          rpc_port = {{ env "NOMAD_PORT_rpc" }}
          metrics_addr = "{{ env "NOMAD_IP_metrics" }}:{{ env "NOMAD_PORT_metrics" }}"
          {{ if eq (env "meta.proglog_bootstrap") "true" }}bootstrap = true{{ end }}
          start_join_addrs = ${jsonencode(var.join_addrs)}
          log_format = "json"
          acl_model_file = "{{ env "NOMAD_TASK_DIR" }}/model.conf"
          acl_policy_file = "{{ env "NOMAD_SECRETS_DIR" }}/policy.csv"
          server_tls_cert_file = "{{ env "NOMAD_SECRETS_DIR" }}/server.pem"
          server_tls_key_file = "{{ env "NOMAD_SECRETS_DIR" }}/server-key.pem"
          server_tls_ca_file = "{{ env "NOMAD_SECRETS_DIR" }}/ca.pem"
          peer_tls_cert_file = "{{ env "NOMAD_SECRETS_DIR" }}/server.pem"
          peer_tls_key_file = "{{ env "NOMAD_SECRETS_DIR" }}/server-key.pem"
          peer_tls_ca_file = "{{ env "NOMAD_SECRETS_DIR" }}/ca.pem"
        EOT
      }

      template {
        destination = "local/model.conf"
        data        = <<-EOT
          [request_definition]
          r = sub, obj, act

          [policy_definition]
          p = sub, obj, act

          [policy_effect]
          e = some(where (p.eft == allow))

          [matchers]
          m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
        EOT
      }

      # Certificates and the ACL policy from Nomad Variables (README): a
      # rotation re-renders them and SIGHUP reloads them without dropping
      # connections.
      template {
        destination   = "secrets/policy.csv"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = "{{ with nomadVar \"nomad/jobs/proglog\" }}{{ .policy_csv }}{{ end }}"
      }

      template {
        destination   = "secrets/ca.pem"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = "{{ with nomadVar \"nomad/jobs/proglog\" }}{{ .ca_pem }}{{ end }}"
      }

      template {
        destination   = "secrets/server.pem"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = "{{ with nomadVar \"nomad/jobs/proglog\" }}{{ .server_pem }}{{ end }}"
      }

      template {
        destination   = "secrets/server-key.pem"
        perms         = "0600"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = "{{ with nomadVar \"nomad/jobs/proglog\" }}{{ .server_key_pem }}{{ end }}"
      }

      resources {
        cpu    = 1000
        memory = 256
      }
    }
  }
}

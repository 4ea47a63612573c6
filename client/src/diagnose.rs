//! Turning a failed connection into an error that says what was dialled,
//! what happened and the likely fix. tonic reports a plaintext client
//! reaching a TLS agent as `h2 protocol error` or `operation was canceled`
//! and a refused connection as `transport error`; [`diagnose`] probes the
//! address itself to tell these apart. Only for errors made on this side:
//! an agent's own answer (a status it sent) is returned unchanged.

use std::error::Error as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::{Error, Target};

/// How long the probe waits to connect and for the agent's first bytes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The gRPC name of `code` (`RESOURCE_EXHAUSTED`), as the protocol spells
/// it, rather than tonic's description ("Some resource has been
/// exhausted").
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `error` and its sources, `: `-separated, repeats dropped (hyper and
/// tonic often wrap an error in one that prints the same text).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// Whether `error` arose on this side of the connection (a transport
/// failure, or a status tonic made from one) rather than being an answer
/// the agent sent.
fn local(error: &Error) -> bool {
    match error {
        Error::Transport(_) => true,
        // A status made from a local error keeps it as its source; one
        // the agent sent has none.
        Error::Status(s) => {
            s.source().is_some()
                || (matches!(s.code(), Code::Unknown | Code::Internal | Code::Cancelled)
                    && ["h2 protocol error", "operation was canceled"]
                        .iter()
                        .any(|m| s.message().contains(m)))
        }
        _ => false,
    }
}

/// Explains `error` from a call to `target`: when the connection itself
/// failed, probes the address and returns [`Error::Unreachable`] naming
/// the address, the cause and the likely fix; other errors come back
/// unchanged.
pub async fn diagnose(target: &Target, error: Error) -> Error {
    if !local(&error) {
        return error;
    }
    let what = match &error {
        Error::Status(s) => match s.source() {
            Some(src) => chain(src),
            None => s.message().to_string(),
        },
        e => match std::error::Error::source(e) {
            Some(src) => chain(src),
            None => e.to_string(),
        },
    };
    probe(target, what).await
}

/// Dials `target` itself and says what happened as
/// [`Error::Unreachable`]; `what` is the failure seen so far (used when
/// the probe finds nothing more specific).
pub async fn probe(target: &Target, what: String) -> Error {
    let (addr, cause, hint) = match target {
        Target::Unix(path) => {
            let addr = path.display().to_string();
            match tokio::net::UnixStream::connect(path).await {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                    addr,
                    "no such socket".to_string(),
                    format!(
                        "is the agent running with --unix-socket {} (a relative path is \
                         relative to the agent's working directory)?",
                        path.display()
                    ),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => (
                    addr,
                    "connection refused".to_string(),
                    "the socket file is there but no agent listens on it: a stopped \
                     agent's leftover? Start the agent."
                        .to_string(),
                ),
                Err(e) => (addr, e.to_string(), "check the path and its permissions (the socket's mode is --unix-socket-mode, default 0660)".into()),
                Ok(_) => (addr, what, "the agent accepted the connection but the call failed; see the agent's log".into()),
            }
        }
        Target::Tcp { addr, tls } => {
            let (cause, hint) = probe_tcp(addr, tls.is_some(), what).await;
            (addr.clone(), cause, hint)
        }
    };
    Error::Unreachable { addr, cause, hint }
}

/// What the agent at `addr` does with a connection: (cause, hint).
async fn probe_tcp(addr: &str, tls: bool, what: String) -> (String, String) {
    let connect = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await;
    let mut stream = match connect {
        Err(_) => {
            return (
                format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
                "check the address, and that no firewall drops the port".into(),
            )
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return (
                "connection refused".into(),
                "is an agent running there? `proglog agent --dev` serves \
                 127.0.0.1:8400; an agent serves its rpc_port on the host of its \
                 bind_addr; pass --addr host:port"
                    .into(),
            )
        }
        Ok(Err(e)) => return (e.to_string(), "check the address (--addr host:port)".into()),
        Ok(Ok(stream)) => stream,
    };
    // Speak plaintext HTTP/2 as a --dev client would: a plaintext agent
    // answers with a SETTINGS frame (type 0x04 at byte 3), a TLS one with
    // a TLS alert (0x15) or by closing the connection.
    let mut reply = [0u8; 9];
    let read = async {
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await?;
        let mut n = 0;
        while n < reply.len() {
            match stream.read(&mut reply[n..]).await? {
                0 => break,
                k => n += k,
            }
        }
        Ok::<usize, std::io::Error>(n)
    };
    let answer = tokio::time::timeout(PROBE_TIMEOUT, read).await;
    let plaintext = matches!(answer, Ok(Ok(n)) if n >= 4 && reply[3] == 0x04);
    let wants_tls =
        matches!(answer, Ok(Ok(n)) if n == 0 || reply[0] == 0x15) || matches!(answer, Ok(Err(_)));
    match (tls, plaintext, wants_tls) {
        (false, _, true) => (
            "the agent wants TLS".into(),
            "pass --tls-ca-file, --tls-cert-file and --tls-key-file (from `proglog \
             certs`: certs/ca.pem, certs/root-client.pem, certs/root-client-key.pem)"
                .into(),
        ),
        (true, true, _) => (
            "the agent speaks plaintext (a --dev agent)".into(),
            "drop the --tls-* flags".into(),
        ),
        (true, false, _) => (
            format!("TLS failed: {what}"),
            "check that --tls-ca-file signed the agent's certificate (its SANs must \
             name the host dialled) and that the agent's CA signed --tls-cert-file"
                .into(),
        ),
        (false, _, false) => (
            what,
            "the agent accepted the connection; see its log".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_protocol_spelling() {
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::OutOfRange), "OUT_OF_RANGE");
        let e = Error::Status(tonic::Status::resource_exhausted("record too big"));
        assert_eq!(e.to_string(), "RESOURCE_EXHAUSTED: record too big");
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_address_and_the_fix() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let target = Target::Tcp {
            addr: addr.clone(),
            tls: None,
        };
        let err = match crate::Client::connect(target.clone()).await {
            Ok(_) => panic!("connected to a closed port"),
            Err(e) => diagnose(&target, e).await.to_string(),
        };
        assert!(err.contains(&addr), "{err}");
        assert!(err.contains("connection refused"), "{err}");
        assert!(err.contains("agent running"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_unix_socket_is_named() {
        let dir = std::env::temp_dir().join(format!("proglog-diag-{}", std::process::id()));
        let target = Target::Unix(dir.join("none.sock"));
        let mut client = crate::Client::connect(target.clone()).await.unwrap();
        let e = client.servers().await.unwrap_err();
        let err = diagnose(&target, e).await.to_string();
        assert!(err.contains("none.sock"), "{err}");
        assert!(err.contains("no such socket"), "{err}");
    }

    #[tokio::test]
    async fn an_agent_answer_is_left_alone() {
        let target = Target::Unix("/nonexistent".into());
        let e = Error::Status(tonic::Status::out_of_range("offset 9"));
        assert_eq!(
            diagnose(&target, e).await.to_string(),
            "OUT_OF_RANGE: offset 9"
        );
    }
}

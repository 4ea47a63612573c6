//! Authentication (who: the client certificate's Common Name, or the
//! configured subject of the Unix socket) and authorization (Casbin, the
//! book's model: subject, object `*`, action `produce`|`consume`, and
//! ours, `admin`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use casbin::{CoreApi, DefaultModel, Enforcer, FileAdapter};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

use crate::transport::tls::common_name;

/// The ACL object: a literal `*`, as in the book.
pub const OBJECT: &str = "*";
/// Action of the write RPCs.
pub const PRODUCE: &str = "produce";
/// Action of the read RPCs.
pub const CONSUME: &str = "consume";
/// Action of the operator RPCs (`proglog.admin.v1.Admin`): membership
/// changes, leadership transfer, cluster status.
pub const ADMIN: &str = "admin";

/// The ACL could not be loaded from its files.
#[derive(Debug, thiserror::Error)]
#[error("ACL {}: {source}", path.display())]
pub struct AclError {
    /// The model or policy file at fault.
    pub path: PathBuf,
    /// Casbin's complaint.
    #[source]
    pub source: casbin::Error,
}

/// Decides whether a subject may perform an action. Reloadable: a reload
/// builds a new enforcer from the files and swaps it in only if it loads.
///
/// Every call is checked, but not every call pays for it: the Common Name
/// of each client certificate seen and each decision of the policy in
/// force are remembered (a profile at 64 calls in flight showed the
/// certificate parse and the Casbin evaluation on every call). The
/// decisions live with their policy, so a reload starts afresh.
pub struct Authorizer {
    files: Option<(PathBuf, PathBuf)>,
    enforcer: ArcSwapOption<Policy>,
    unix_subject: Option<String>,
    /// Common Name by certificate (DER), bounded by [`REMEMBERED`].
    names: Mutex<HashMap<Vec<u8>, String>>,
}

/// Entries each cache holds before it is emptied and starts again (a
/// cluster has a few clients; a flood of certificates only costs parses).
const REMEMBERED: usize = 1024;

/// A loaded policy and the decisions it gave, per subject and action.
struct Policy {
    enforcer: Enforcer,
    decisions: Mutex<HashMap<String, Vec<(&'static str, bool)>>>,
}

impl Policy {
    fn new(enforcer: Enforcer) -> Policy {
        Policy {
            enforcer,
            decisions: Mutex::default(),
        }
    }

    /// Whether `subject` may perform `action` on [`OBJECT`].
    fn allows(&self, subject: &str, action: &'static str) -> Result<bool, casbin::Error> {
        let remembered = |d: &HashMap<String, Vec<(&'static str, bool)>>| {
            d.get(subject)?
                .iter()
                .find(|(a, _)| *a == action)
                .map(|(_, allowed)| *allowed)
        };
        if let Some(allowed) = remembered(&self.decisions.lock().unwrap_or_else(|e| e.into_inner()))
        {
            return Ok(allowed);
        }
        let allowed = self.enforcer.enforce((subject, OBJECT, action))?;
        let mut decisions = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        if decisions.len() >= REMEMBERED {
            decisions.clear();
        }
        decisions
            .entry(subject.to_string())
            .or_default()
            .push((action, allowed));
        Ok(allowed)
    }
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("files", &self.files)
            .finish()
    }
}

impl Authorizer {
    /// Loads the Casbin model and policy files.
    pub async fn from_files(
        model: &Path,
        policy: &Path,
        unix_subject: Option<String>,
    ) -> Result<Authorizer, AclError> {
        let enforcer = load(model, policy).await?;
        Ok(Authorizer {
            files: Some((model.to_path_buf(), policy.to_path_buf())),
            enforcer: ArcSwapOption::from_pointee(Policy::new(enforcer)),
            unix_subject,
            names: Mutex::default(),
        })
    }

    /// Allows everyone (dev mode: no TLS, no ACL).
    pub fn allow_all() -> Authorizer {
        Authorizer {
            files: None,
            enforcer: ArcSwapOption::empty(),
            unix_subject: None,
            names: Mutex::default(),
        }
    }

    /// Re-reads the ACL files; on error the old policy stays in force.
    pub async fn reload(&self) -> Result<(), AclError> {
        if let Some((model, policy)) = &self.files {
            self.enforcer
                .store(Some(Arc::new(Policy::new(load(model, policy).await?))));
        }
        Ok(())
    }

    /// Checks that the caller of `req` may perform `action`.
    pub fn authorize<T>(&self, req: &Request<T>, action: &'static str) -> Result<(), Status> {
        let Some(policy) = self.enforcer.load_full() else {
            return Ok(());
        };
        let subject = self.subject(req)?;
        match policy.allows(&subject, action) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Status::permission_denied(format!(
                "{subject} not permitted to {action} to {OBJECT}"
            ))),
            Err(e) => Err(Status::internal(format!("ACL evaluation failed: {e}"))),
        }
    }

    /// The caller's identity: the Unix socket's subject, or the CN of the
    /// client certificate.
    pub fn subject<T>(&self, req: &Request<T>) -> Result<String, Status> {
        if req.extensions().get::<UdsConnectInfo>().is_some() {
            return self.unix_subject.clone().ok_or_else(|| {
                Status::unauthenticated("no subject configured for the unix socket")
            });
        }
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let der: &[u8] = leaf.as_ref();
        let known = self.lock_names().get(der).cloned();
        if let Some(name) = known {
            return Ok(name);
        }
        let name = common_name(der)
            .ok_or_else(|| Status::unauthenticated("client certificate has no common name"))?;
        let mut names = self.lock_names();
        if names.len() >= REMEMBERED {
            names.clear();
        }
        names.insert(der.to_vec(), name.clone());
        Ok(name)
    }
}

impl Authorizer {
    fn lock_names(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, String>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn load(model: &Path, policy: &Path) -> Result<Enforcer, AclError> {
    let m = DefaultModel::from_file(model)
        .await
        .map_err(|source| AclError {
            path: model.to_path_buf(),
            source,
        })?;
    if !policy.is_file() {
        return Err(AclError {
            path: policy.to_path_buf(),
            source: casbin::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file",
            )),
        });
    }
    Enforcer::new(m, FileAdapter::new(policy.to_path_buf()))
        .await
        .map_err(|source| AclError {
            path: policy.to_path_buf(),
            source,
        })
}

//! Who may pull and push through the registry: users with bcrypt passwords, grants per
//! repository pattern, and the distribution token flow Docker clients speak.
//!
//! A request is judged from its `Authorization` header:
//! - none: anonymous, allowed to pull (and push) only as `auth.anonymous_*` say; otherwise `401`
//!   with a `Bearer` challenge naming the realm, the service and the scope it needs;
//! - `Basic`: the user's password, checked against its bcrypt hash (successes are remembered
//!   for a minute, so a client sending basic auth on every request does not pay for bcrypt
//!   each time); then the user's grants;
//! - `Bearer`: a token this proxy issued at `/auth/token` (ES256, short-lived), whose `access`
//!   claim must cover the request. A token that falls short while the user's grants would
//!   allow more gets a new challenge (`error="insufficient_scope"`), so the client fetches a
//!   wider token; a user who may not do it at all gets `403 DENIED`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::{HeaderMap, Method, StatusCode, Uri, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use kraken_config::proxy::ProxyConfig;
use kraken_config::registry_auth::{RegistryAction, RegistryAuthConfig, is_bcrypt, valid_user};
use kraken_oci::{ErrorCode, RegistryError, Route};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The name the client used to reach us: HTTP/2's `:authority` (in the URI) or HTTP/1.1's
/// `Host` header.
pub(crate) fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// The path of the token endpoint (outside `/v2/`, as the spec leaves it to the realm).
pub(crate) const TOKEN_PATH: &str = "/auth/token";

/// How long a verified basic-auth password is remembered.
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Passwords remembered at once (a cache, not a record: the oldest half goes when full).
const VERIFIED_CAPACITY: usize = 4096;
/// Scopes one token request may name.
const MAX_SCOPES: usize = 16;

/// Why the registry's authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read htpasswd file {path}")]
    ReadHtpasswd {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {problem}")]
    Htpasswd {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("cannot read the token signing key {path}")]
    ReadKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the token signing key is not a usable EC P-256 PEM key")]
    Key(#[source] jsonwebtoken::errors::Error),
    #[error("generating a token signing key")]
    Generate(#[source] rcgen::Error),
}

/// The registry's users, grants and tokens.
pub(crate) struct RegistryAuth {
    users: HashMap<String, String>,
    grants: Vec<Grant>,
    anonymous_pull: bool,
    anonymous_push: bool,
    service: String,
    realm: Option<String>,
    scheme: &'static str,
    ttl: Duration,
    encoding: EncodingKey,
    decoding: DecodingKey,
    verified: Mutex<HashMap<(String, [u8; 32]), Instant>>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("users", &self.users.len())
            .field("grants", &self.grants.len())
            .field("anonymous_pull", &self.anonymous_pull)
            .field("anonymous_push", &self.anonymous_push)
            .finish_non_exhaustive()
    }
}

struct Grant {
    users: Vec<String>,
    repositories: kraken_config::Pattern,
    actions: Vec<RegistryAction>,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    Anonymous,
    /// A user whose password was checked on this request.
    User(String),
    /// A token this proxy issued.
    Token(Claims),
}

impl Caller {
    /// The user name for logs and metrics (`anonymous` without one).
    pub(crate) fn name(&self) -> &str {
        self.user().unwrap_or("anonymous")
    }

    fn user(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::User(user) => Some(user),
            Caller::Token(claims) => (!claims.sub.is_empty()).then_some(claims.sub.as_str()),
        }
    }
}

/// What one request needs: actions on repositories. Empty for the version check, which only
/// needs a caller the registry knows (so `docker login` verifies the password).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Needs {
    pub(crate) access: Vec<(String, RegistryAction)>,
    /// The version check: credentials are required (if any are sent they must be right).
    pub(crate) login: bool,
}

impl Needs {
    /// What `method` on `route` needs; `query` for a mount's `from` repository.
    pub(crate) fn of(method: &Method, route: &Route<'_>, query: Option<&str>) -> Self {
        let read = matches!(*method, Method::GET | Method::HEAD);
        let mut needs = Needs::default();
        match route {
            Route::Base => needs.login = true,
            Route::Catalog => {}
            Route::TagsList { name } => needs
                .access
                .push(((*name).to_owned(), RegistryAction::Pull)),
            Route::Manifest { name, .. } | Route::Blob { name, .. } => {
                let action = if read {
                    RegistryAction::Pull
                } else {
                    RegistryAction::Push
                };
                needs.access.push(((*name).to_owned(), action));
            }
            Route::UploadStart { name } => {
                needs
                    .access
                    .push(((*name).to_owned(), RegistryAction::Push));
                // A cross-repository mount reads the source repository.
                let from = query.into_iter().flat_map(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .filter(|(key, _)| key == "from")
                        .map(|(_, value)| value.into_owned())
                        .collect::<Vec<_>>()
                });
                for from in from.take(1) {
                    needs.access.push((from, RegistryAction::Pull));
                }
            }
            Route::Upload { name, .. } => {
                needs
                    .access
                    .push(((*name).to_owned(), RegistryAction::Push));
            }
        }
        needs
    }

    /// Whether the request writes (pushes a blob, a manifest or a tag).
    pub(crate) fn writes(&self) -> bool {
        self.access.iter().any(|(_, a)| *a == RegistryAction::Push)
    }

    fn scope(&self) -> Option<String> {
        let mut by_repo: Vec<(&str, BTreeSet<&str>)> = Vec::new();
        for (repo, action) in &self.access {
            let action = action_name(*action);
            match by_repo.iter_mut().find(|(r, _)| r == repo) {
                Some((_, actions)) => {
                    actions.insert(action);
                }
                None => by_repo.push((repo, BTreeSet::from([action]))),
            }
        }
        if by_repo.is_empty() {
            return None;
        }
        Some(
            by_repo
                .into_iter()
                .map(|(repo, actions)| {
                    // Docker asks for `pull,push` when pushing; name both so one token does.
                    let mut actions = actions;
                    if actions.contains("push") {
                        actions.insert("pull");
                    }
                    let actions: Vec<&str> = actions.into_iter().collect();
                    format!("repository:{repo}:{}", actions.join(","))
                })
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

fn action_name(action: RegistryAction) -> &'static str {
    match action {
        RegistryAction::Pull => "pull",
        RegistryAction::Push => "push",
    }
}

/// A token's claims, as the distribution token spec lays them out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<AccessClaim>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccessClaim {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

/// The token endpoint's answer.
#[derive(Debug, Serialize)]
pub(crate) struct TokenResponse {
    token: String,
    access_token: String,
    expires_in: u64,
    issued_at: String,
}

impl RegistryAuth {
    /// Reads users (inline and from the htpasswd file) and the signing key, or makes one.
    pub(crate) fn from_config(config: &ProxyConfig) -> Result<Self, AuthSetupError> {
        let auth: &RegistryAuthConfig = &config.auth;
        let mut users: HashMap<String, String> = auth
            .users
            .iter()
            .map(|(u, h)| (u.clone(), h.clone()))
            .collect();
        if let Some(path) = &auth.htpasswd_file {
            users.extend(read_htpasswd(path)?);
        }
        let (encoding, decoding) = match &auth.token.signing_key_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| AuthSetupError::ReadKey {
                    path: path.display().to_string(),
                    source,
                })?;
                let key = rcgen::KeyPair::from_pem(&String::from_utf8_lossy(&pem))
                    .map_err(AuthSetupError::Generate)?;
                keys(&key)?
            }
            None => keys(&rcgen::KeyPair::generate().map_err(AuthSetupError::Generate)?)?,
        };
        if users.is_empty() && !auth.anonymous_push {
            tracing::warn!(
                "the registry has no users and anonymous push is off: pushes are refused \
                 (set `auth.users` or `auth.htpasswd_file`)"
            );
        }
        Ok(Self {
            users,
            grants: auth
                .grants
                .iter()
                .map(|g| Grant {
                    users: g.users.clone(),
                    repositories: g.repositories.clone(),
                    actions: g.actions.clone(),
                })
                .collect(),
            anonymous_pull: auth.anonymous_pull,
            anonymous_push: auth.anonymous_push,
            service: auth.token.service.clone(),
            realm: auth.token.realm.clone(),
            scheme: if config.registry_tls.files().is_some() {
                "https"
            } else {
                "http"
            },
            ttl: auth.token.ttl,
            encoding,
            decoding,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `user` (`None`: anonymous) may do `action` on `repository`.
    fn may(&self, user: Option<&str>, repository: &str, action: RegistryAction) -> bool {
        let Some(user) = user else {
            return match action {
                RegistryAction::Pull => self.anonymous_pull,
                RegistryAction::Push => self.anonymous_push,
            };
        };
        // Anonymous rights extend to every user.
        if self.may(None, repository, action) {
            return true;
        }
        if self.grants.is_empty() {
            return true;
        }
        self.grants.iter().any(|grant| {
            grant.actions.contains(&action)
                && grant.users.iter().any(|u| u == "*" || u == user)
                && grant.repositories.is_match(repository)
        })
    }

    /// Who sent `headers`; `Err` for credentials that are wrong or unreadable.
    /// `host` is the name the client used (HTTP/2 `:authority` or the `Host` header), for the
    /// realm in challenges.
    pub(crate) async fn caller(
        &self,
        headers: &HeaderMap,
        host: Option<&str>,
    ) -> Result<Caller, RegistryError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Caller::Anonymous);
        };
        let value = value.to_str().unwrap_or_default();
        let (kind, credentials) = value.split_once(' ').unwrap_or((value, ""));
        if kind.eq_ignore_ascii_case("basic") {
            let (user, password) = decode_basic(credentials.trim())
                .ok_or_else(|| self.challenge(host, "malformed basic credentials"))?;
            if self.check_password(&user, &password).await {
                Ok(Caller::User(user))
            } else {
                metrics::counter!(crate::metrics::AUTH, "result" => "bad_credentials").increment(1);
                tracing::info!(user = %clip(&user), "registry login refused: wrong user or password");
                Err(self.challenge(host, "wrong user name or password"))
            }
        } else if kind.eq_ignore_ascii_case("bearer") {
            let mut validation = Validation::new(Algorithm::ES256);
            validation.set_audience(&[&self.service]);
            validation.set_issuer(&[&self.service]);
            validation.leeway = 5;
            match jsonwebtoken::decode::<Claims>(credentials.trim(), &self.decoding, &validation) {
                Ok(token) => Ok(Caller::Token(token.claims)),
                Err(error) => {
                    metrics::counter!(crate::metrics::AUTH, "result" => "bad_token").increment(1);
                    Err(self.challenge(host, format!("invalid token: {error}")))
                }
            }
        } else {
            Err(self.challenge(host, "unsupported authorization scheme"))
        }
    }

    /// Whether `caller` may do what `needs` says: `Ok` or the error to answer with.
    pub(crate) fn permit(
        &self,
        caller: &Caller,
        needs: &Needs,
        host: Option<&str>,
    ) -> Result<(), RegistryError> {
        let realm = self.realm(host);
        // An open registry (anonymous pull and push) has no login to check.
        let open = self.anonymous_pull && self.anonymous_push;
        if needs.login && !open && matches!(caller, Caller::Anonymous) {
            return Err(self.challenge_at(&realm, None, None, "authentication required"));
        }
        let missing: Vec<&(String, RegistryAction)> = needs
            .access
            .iter()
            .filter(|(repo, action)| match caller {
                Caller::Token(claims) => {
                    !claims.access.iter().any(|a| {
                        a.kind == "repository"
                            && a.name == *repo
                            && a.actions.iter().any(|x| x == action_name(*action))
                    }) && !self.may(None, repo, *action)
                }
                other => !self.may(other.user(), repo, *action),
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let user_could = missing
            .iter()
            .all(|(repo, action)| self.may(caller.user(), repo, *action));
        match caller {
            // An anonymous token falls short the way no credentials do: log in.
            _ if caller.user().is_none() => {
                Err(self.challenge_at(&realm, needs.scope(), None, "authentication required"))
            }
            Caller::Token(_) if user_could => Err(self.challenge_at(
                &realm,
                needs.scope(),
                Some("insufficient_scope"),
                "the token does not cover this request",
            )),
            _ => {
                let (repo, action) = missing[0];
                Err(RegistryError::new(
                    ErrorCode::Denied,
                    format!(
                        "`{}` may not {} `{}`",
                        caller.name(),
                        action_name(*action),
                        clip(repo)
                    ),
                ))
            }
        }
    }

    /// Issues a token for `caller` (anonymous or a checked user) covering what it asked for
    /// in `scopes` and may have.
    pub(crate) fn issue(
        &self,
        caller: &Caller,
        scopes: &[String],
    ) -> Result<TokenResponse, RegistryError> {
        let mut access = Vec::new();
        for scope in scopes.iter().take(MAX_SCOPES) {
            for one in scope.split(' ') {
                let Some(rest) = one.strip_prefix("repository:") else {
                    continue;
                };
                let Some((name, actions)) = rest.rsplit_once(':') else {
                    continue;
                };
                if name.is_empty() || name.len() > 256 {
                    continue;
                }
                let granted: Vec<String> = actions
                    .split(',')
                    .filter_map(|a| match a {
                        "pull" => Some(RegistryAction::Pull),
                        "push" => Some(RegistryAction::Push),
                        _ => None,
                    })
                    .filter(|a| self.may(caller.user(), name, *a))
                    .map(|a| action_name(a).to_owned())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if !granted.is_empty() {
                    access.push(AccessClaim {
                        kind: "repository".to_owned(),
                        name: name.to_owned(),
                        actions: granted,
                    });
                }
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: self.service.clone(),
            sub: caller.user().unwrap_or_default().to_owned(),
            aud: self.service.clone(),
            exp: now + self.ttl.as_secs(),
            nbf: now.saturating_sub(5),
            iat: now,
            jti: format!("{:032x}", rand::random::<u128>()),
            access,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(|error| {
            RegistryError::new(ErrorCode::Unknown, format!("signing a token: {error}"))
                .with_status(StatusCode::INTERNAL_SERVER_ERROR)
        })?;
        metrics::counter!(crate::metrics::AUTH, "result" => "token_issued").increment(1);
        Ok(TokenResponse {
            access_token: token.clone(),
            token,
            expires_in: self.ttl.as_secs(),
            issued_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        })
    }

    async fn check_password(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user).cloned() else {
            // Spend the same effort on unknown users, so timing does not reveal which exist.
            let dummy = "$2y$10$7EqJtq98hPqEX7fNZaFWoOhi5BWX4Z2yH4w8aZFfGJHZcPD1RbK.W";
            let password = password.to_owned();
            let _ = tokio::task::spawn_blocking(move || bcrypt::verify(password, dummy)).await;
            return false;
        };
        let key = (user.to_owned(), Sha256::digest(password.as_bytes()).into());
        let now = Instant::now();
        if kraken_core::sync::lock(&self.verified)
            .get(&key)
            .is_some_and(|until| *until > now)
        {
            return true;
        }
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if ok {
            let mut verified = kraken_core::sync::lock(&self.verified);
            if verified.len() >= VERIFIED_CAPACITY {
                verified.retain(|_, until| *until > now);
                if verified.len() >= VERIFIED_CAPACITY {
                    verified.clear();
                }
            }
            verified.insert(key, now + VERIFIED_TTL);
        }
        ok
    }

    fn realm(&self, host: Option<&str>) -> String {
        if let Some(realm) = &self.realm {
            return realm.clone();
        }
        // The host names how the client reached us; anything odd in it is not echoed.
        let host = host
            .filter(|h| {
                !h.is_empty()
                    && h.len() <= 255
                    && h.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')
                    })
            })
            .unwrap_or("localhost");
        format!("{}://{host}{TOKEN_PATH}", self.scheme)
    }

    /// A `401` for credentials that failed before the request was looked at.
    fn challenge(&self, host: Option<&str>, message: impl Into<String>) -> RegistryError {
        let realm = self.realm(host);
        self.challenge_at(&realm, None, Some("invalid_token"), message)
    }

    /// A `401` telling the client where to get a token for `scope`.
    fn challenge_at(
        &self,
        realm: &str,
        scope: Option<String>,
        error: Option<&str>,
        message: impl Into<String>,
    ) -> RegistryError {
        metrics::counter!(crate::metrics::AUTH, "result" => "challenged").increment(1);
        let mut value = format!("Bearer realm=\"{realm}\",service=\"{}\"", self.service);
        if let Some(scope) = scope {
            value.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(error) = error {
            value.push_str(&format!(",error=\"{error}\""));
        }
        RegistryError::new(ErrorCode::Unauthorized, message)
            .with_header(header::WWW_AUTHENTICATE, value)
    }
}

fn keys(key: &rcgen::KeyPair) -> Result<(EncodingKey, DecodingKey), AuthSetupError> {
    let encoding =
        EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).map_err(AuthSetupError::Key)?;
    let decoding =
        DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).map_err(AuthSetupError::Key)?;
    Ok((encoding, decoding))
}

fn read_htpasswd(path: &Path) -> Result<Vec<(String, String)>, AuthSetupError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::ReadHtpasswd {
        path: shown.clone(),
        source,
    })?;
    let mut users = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let problem = |problem: &str| AuthSetupError::Htpasswd {
            path: shown.clone(),
            line: index + 1,
            problem: problem.to_owned(),
        };
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| problem("expected `user:bcrypt-hash`"))?;
        if !valid_user(user) {
            return Err(problem("invalid user name"));
        }
        if !is_bcrypt(hash) {
            return Err(problem(
                "only bcrypt hashes are accepted (`htpasswd -B`); MD5, SHA-1 and crypt are not",
            ));
        }
        users.push((user.to_owned(), hash.to_owned()));
    }
    Ok(users)
}

fn decode_basic(credentials: &str) -> Option<(String, String)> {
    if credentials.len() > 1024 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

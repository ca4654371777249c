//! Holders' local accounts and browser sessions.
//!
//! Passwords are argon2id hashes (m = 19 MiB, t = 2, p = 1: the OWASP
//! baseline), computed on the blocking pool with at most as many hashes at
//! once as there are cores, so a flood of logins cannot starve the server.
//! After [`MAX_FAILURES`] consecutive failures an account is locked, for a
//! time that doubles with every further failure (at most an hour); a locked
//! account is refused before any hash is computed. Unknown identifiers cost
//! the same hash as known ones, so timing does not reveal who has an account.
//! Session ids are 256-bit random values; only their SHA-256 is stored.

use std::sync::{Arc, LazyLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::app::Services;
use crate::audit::{ActorKind, AuditEvent, Outcome};
use crate::error::{Error, Result};
use crate::keys::{random_bytes, random_token, sha256};
use crate::store::{now, timestamp};

/// Consecutive failures before an account is locked.
pub const MAX_FAILURES: i64 = 5;
/// First lock, in seconds; doubles with each further failure.
const FIRST_LOCK_SECONDS: i64 = 30;
/// Longest lock.
const MAX_LOCK_SECONDS: i64 = 3600;
/// Session lifetime.
pub const SESSION_SECONDS: i64 = 30 * 60;
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;

static HASHING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Arc::new(Semaphore::new(cores))
});

/// A hash of a random password, verified against when the identifier is unknown.
static DECOY: LazyLock<Option<String>> =
    LazyLock::new(|| random_token(16).ok().and_then(|p| hash_blocking(&p).ok()));

fn argon2() -> Result<Argon2<'static>> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(Error::internal)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random_bytes(16)?).map_err(Error::internal)?;
    Ok(argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(Error::internal)?
        .to_string())
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    argon2().is_ok_and(|a| a.verify_password(password.as_bytes(), &parsed).is_ok())
}

async fn on_blocking_pool<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let _permit = HASHING
        .clone()
        .acquire_owned()
        .await
        .map_err(Error::internal)?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)
}

/// Hashes a password with argon2id.
pub async fn hash_password(password: String) -> Result<String> {
    on_blocking_pool(move || hash_blocking(&password)).await?
}

/// Sets a holder's password (operator or demo); the holder must exist.
pub async fn set_password(services: &Services, identifier: &str, password: &str) -> Result<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::invalid_field(
            "password",
            format!("must have at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    let (holder_id, _) = services
        .library
        .holder_by_identifier(identifier)
        .await?
        .ok_or_else(|| Error::NotFound("no holder has this identifier".into()))?;
    let hash = hash_password(password.to_owned()).await?;
    services
        .store
        .set_holder_password(&holder_id, &hash, &timestamp(now()))
        .await?;
    Ok(holder_id)
}

/// Checks a password against an account's argon2id hash on the blocking
/// pool; without an account, against a decoy hash (same cost) and false.
pub async fn check_password(phc: Option<String>, password: &str) -> Result<bool> {
    let known = phc.is_some();
    let phc = phc
        .or_else(|| DECOY.clone())
        .ok_or_else(|| Error::internal("cannot prepare the password check"))?;
    let pw = password.to_owned();
    Ok(on_blocking_pool(move || verify_blocking(&pw, &phc)).await? && known)
}

/// Until when an account is locked after `failures` consecutive failures
/// (0: not locked).
pub fn lock_until(failures: i64, now_unix: i64) -> i64 {
    if failures < MAX_FAILURES {
        return 0;
    }
    let exp = u32::try_from(failures - MAX_FAILURES)
        .unwrap_or(u32::MAX)
        .min(16);
    now_unix + (FIRST_LOCK_SECONDS << exp).min(MAX_LOCK_SECONDS)
}

/// Why a login failed (shown to the person trying).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginFailure {
    /// Wrong identifier or password (never says which).
    Invalid,
    /// Too many failures; try again after this many seconds.
    Locked(i64),
}

/// Checks an identifier and password; audits success and failure.
pub async fn login(
    services: &Services,
    identifier: &str,
    password: &str,
) -> Result<Result<String, LoginFailure>> {
    let now_unix = now().unix_timestamp();
    let holder = services.library.holder_by_identifier(identifier).await?;
    let account = match &holder {
        Some((id, _)) => services.store.holder_account(id).await?,
        None => None,
    };
    let refuse = |holder: Option<&str>, why: &str| {
        let mut e = AuditEvent::new(
            if holder.is_some() {
                ActorKind::Holder
            } else {
                ActorKind::Anonymous
            },
            holder.unwrap_or("-"),
            "holder.authenticated",
            Outcome::Refused,
        )
        .reason(why.to_owned());
        if let Some(h) = holder {
            e = e.holder(h);
        }
        services.audit.record(e)
    };
    if let (Some((id, _)), Some(a)) = (&holder, &account) {
        if a.locked_until > now_unix {
            refuse(Some(id), "account locked after repeated failures").await?;
            return Ok(Err(LoginFailure::Locked(a.locked_until - now_unix)));
        }
    }
    let ok = check_password(account.as_ref().map(|a| a.password_hash.clone()), password).await?;
    match (holder, account) {
        (Some((id, _)), Some(a)) if ok => {
            if a.failed_logins != 0 {
                services.store.clear_login_failures(&id).await?;
            }
            services
                .audit
                .record(
                    AuditEvent::new(
                        ActorKind::Holder,
                        &id,
                        "holder.authenticated",
                        Outcome::Success,
                    )
                    .holder(&id)
                    .reason("password"),
                )
                .await?;
            Ok(Ok(id))
        }
        (Some((id, _)), Some(a)) => {
            let failures = a.failed_logins + 1;
            let locked_until = lock_until(failures, now_unix);
            services
                .store
                .record_login_failure(&id, locked_until)
                .await?;
            refuse(Some(&id), &format!("wrong password (failure {failures})")).await?;
            Ok(Err(LoginFailure::Invalid))
        }
        (holder, _) => {
            refuse(
                holder.as_ref().map(|(id, _)| id.as_str()),
                "unknown identifier or no account",
            )
            .await?;
            Ok(Err(LoginFailure::Invalid))
        }
    }
}

/// Starts a session for a holder; returns the session id for the cookie.
pub async fn start_session(services: &Services, holder_id: &str) -> Result<String> {
    let id = random_token(32)?;
    let t = now();
    services
        .store
        .insert_session(
            &sha256(&id),
            holder_id,
            t.unix_timestamp() + SESSION_SECONDS,
            &timestamp(t),
        )
        .await?;
    Ok(id)
}

/// The holder of a live session.
pub async fn session_holder(services: &Services, session_id: &str) -> Result<Option<String>> {
    services
        .store
        .session_holder(&sha256(session_id), now().unix_timestamp())
        .await
}

/// Ends a session.
pub async fn end_session(services: &Services, session_id: &str) -> Result<()> {
    services
        .store
        .delete_session(&sha256(session_id), now().unix_timestamp())
        .await
}

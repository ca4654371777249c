//! The regulators' console: accounts (people, argon2id, locked after
//! repeated failures like holders'), sessions, and the statistics and
//! anomaly list computed from the audit log. The console only reads: no
//! page of it changes anything but the regulator's own session.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::app::Services;
use crate::audit::{ActorKind, AuditEvent, Outcome};
use crate::error::{Error, Result};
use crate::holders::{
    check_password, hash_password, lock_until, MIN_PASSWORD_CHARS, SESSION_SECONDS,
};
use crate::keys::{random_token, sha256};
use crate::store::{now, parse_timestamp, timestamp};

/// Creates or resets a regulator's console account (operators, demo).
pub async fn set_account(
    services: &Services,
    username: &str,
    display_name: &str,
    password: &str,
) -> Result<()> {
    if username.is_empty()
        || username.len() > 64
        || !username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(Error::invalid_field(
            "username",
            "1-64 letters, digits, '.', '_' or '-'",
        ));
    }
    if display_name.trim().is_empty() || display_name.chars().count() > 100 {
        return Err(Error::invalid_field(
            "display_name",
            "must be 1-100 characters",
        ));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::invalid_field(
            "password",
            format!("must have at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    let hash = hash_password(password.to_owned()).await?;
    services
        .store
        .set_console_account(username, display_name.trim(), &hash, &timestamp(now()))
        .await
}

/// Checks a regulator's password; audits success and failure. Ok(Err(secs))
/// when the account is locked for `secs` more seconds, Ok(Ok(None)) when
/// the name or password is wrong.
pub async fn login(
    services: &Services,
    username: &str,
    password: &str,
) -> Result<std::result::Result<Option<String>, i64>> {
    let t = now().unix_timestamp();
    let account = services.store.console_account(username).await?;
    let known = account.is_some();
    let record = |outcome: Outcome, why: &str| {
        services.audit.record(
            AuditEvent::new(
                if known {
                    ActorKind::Regulator
                } else {
                    ActorKind::Anonymous
                },
                if known { username } else { "-" },
                "regulator.authenticated",
                outcome,
            )
            .reason(why.to_owned()),
        )
    };
    if let Some(a) = &account {
        if a.locked_until > t {
            record(Outcome::Refused, "account locked after repeated failures").await?;
            return Ok(Err(a.locked_until - t));
        }
    }
    let ok = check_password(account.as_ref().map(|a| a.password_hash.clone()), password).await?;
    match account {
        Some(_) if ok => {
            services.store.console_login_succeeded(username).await?;
            record(Outcome::Success, "password").await?;
            let id = random_token(32)?;
            services
                .store
                .insert_console_session(
                    &sha256(&id),
                    username,
                    t + SESSION_SECONDS,
                    &timestamp(now()),
                )
                .await?;
            Ok(Ok(Some(id)))
        }
        Some(a) => {
            let failures = a.failed_logins + 1;
            services
                .store
                .console_login_failed(username, lock_until(failures, t))
                .await?;
            record(
                Outcome::Refused,
                &format!("wrong password (failure {failures})"),
            )
            .await?;
            Ok(Ok(None))
        }
        None => {
            record(Outcome::Refused, "unknown console account").await?;
            Ok(Ok(None))
        }
    }
}

/// The regulator (username, display name) of a live console session.
pub async fn session(services: &Services, id: &str) -> Result<Option<(String, String)>> {
    services
        .store
        .console_session(&sha256(id), now().unix_timestamp())
        .await
}

/// Ends a console session.
pub async fn logout(services: &Services, id: &str) -> Result<()> {
    services
        .store
        .delete_console_session(&sha256(id), now().unix_timestamp())
        .await
}

/// One entity's activity over a period.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct EntityStats {
    /// The entity (client id).
    pub entity: String,
    /// Its name.
    pub name: String,
    /// Sector.
    pub sector: String,
    /// Successful retrievals.
    pub reads: i64,
    /// Successful verifications.
    pub verifications: i64,
    /// Refused requests of any kind.
    pub refusals: i64,
    /// Consents granted.
    pub consents: i64,
    /// Of which revoked.
    pub revocations: i64,
    /// Refusals by reason (most frequent first).
    pub refusal_reasons: Vec<(String, i64)>,
}

impl EntityStats {
    /// Refused share of everything the entity asked.
    pub fn refusal_rate(&self) -> f64 {
        let total = self.reads + self.verifications + self.refusals;
        if total == 0 {
            0.0
        } else {
            self.refusals as f64 / total as f64
        }
    }
}

/// Per-entity statistics over [from, to) (RFC 3339).
pub async fn stats(services: &Services, from: &str, to: &str) -> Result<Vec<EntityStats>> {
    parse_timestamp(from)?;
    parse_timestamp(to)?;
    let mut by: BTreeMap<String, EntityStats> = BTreeMap::new();
    for a in services.store.entity_activity(from, to).await? {
        let s = by.entry(a.entity.clone()).or_default();
        match (a.action.as_str(), a.outcome.as_str()) {
            ("license.retrieved", "success") => s.reads += a.count,
            ("license.verified", "success") => s.verifications += a.count,
            (_, "refused") => s.refusals += a.count,
            _ => {}
        }
    }
    for (client, granted, revoked) in services.store.consent_counts(from, to).await? {
        let s = by.entry(client).or_default();
        s.consents += granted;
        s.revocations += revoked;
    }
    for (client, reason, n) in services.store.refusal_reasons(from, to).await? {
        let s = by.entry(client).or_default();
        let short: String = reason.chars().take(120).collect();
        s.refusal_reasons.push((short, n));
    }
    let mut out = Vec::with_capacity(by.len());
    for (id, mut s) in by {
        let entity = services.store.entity(&id).await?;
        s.name = entity
            .as_ref()
            .map_or_else(|| id.clone(), |e| e.name.clone());
        s.sector = entity.map(|e| e.sector).unwrap_or_default();
        s.entity = id;
        out.push(s);
    }
    Ok(out)
}

/// Something a regulator should look at.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Anomaly {
    /// The entity.
    pub entity: String,
    /// Its name.
    pub name: String,
    /// high_refusal_rate, outside_use_list or budget_exhausted_quickly.
    pub kind: String,
    /// What was seen.
    pub detail: String,
}

/// Refusal rates above this (with at least [`MIN_REQUESTS`] requests) are anomalies.
pub const REFUSAL_RATE_LIMIT: f64 = 0.2;
/// Fewest requests before a refusal rate means anything.
pub const MIN_REQUESTS: i64 = 5;
/// A budget of several reads spent within this many seconds of the consent is an anomaly.
pub const QUICK_SPEND_SECONDS: i64 = 3600;

/// Refusal reasons that mean an entity asked for more than it may have:
/// beyond its use list (request and policy refusals) or its consent
/// (retrieval refusals).
const OUTSIDE_SCOPE: [&str; 4] = [
    "use list",
    "outside",
    "not covered by the consent",
    "no license of this consent",
];

/// The anomaly list over [from, to).
pub async fn anomalies(services: &Services, from: &str, to: &str) -> Result<Vec<Anomaly>> {
    let stats = stats(services, from, to).await?;
    let mut out = Vec::new();
    for s in &stats {
        let total = s.reads + s.verifications + s.refusals;
        if total >= MIN_REQUESTS && s.refusal_rate() > REFUSAL_RATE_LIMIT {
            out.push(Anomaly {
                entity: s.entity.clone(),
                name: s.name.clone(),
                kind: "high_refusal_rate".into(),
                detail: format!(
                    "{} of {total} requests refused ({:.0}%)",
                    s.refusals,
                    s.refusal_rate() * 100.0
                ),
            });
        }
        let outside: i64 = s
            .refusal_reasons
            .iter()
            .filter(|(r, _)| OUTSIDE_SCOPE.iter().any(|m| r.contains(m)))
            .map(|(_, n)| n)
            .sum();
        if outside > 0 {
            out.push(Anomaly {
                entity: s.entity.clone(),
                name: s.name.clone(),
                kind: "outside_use_list".into(),
                detail: format!("{outside} requests for data outside the use list or the consent"),
            });
        }
    }
    for c in services.store.used_up_consents(from, to).await? {
        let (Ok(granted), Ok(last)) = (
            parse_timestamp(&c.created_at),
            parse_timestamp(&c.updated_at),
        ) else {
            continue;
        };
        let secs = (last - granted).whole_seconds();
        if c.max_retrievals >= 2 && secs <= QUICK_SPEND_SECONDS {
            let name = services
                .store
                .entity(&c.client_id)
                .await?
                .map_or_else(|| c.client_id.clone(), |e| e.name);
            out.push(Anomaly {
                entity: c.client_id.clone(),
                name,
                kind: "budget_exhausted_quickly".into(),
                detail: format!(
                    "consent {}: all {} reads within {secs} s of the grant",
                    c.id, c.max_retrievals
                ),
            });
        }
    }
    Ok(out)
}

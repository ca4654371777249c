//! The grants of the token endpoint that act for a holder: authorization
//! code (RFC 6749 §4.1 with PKCE S256, RFC 7636), refresh token (bound to the
//! client and its DPoP key, not rotated, never outliving the consent), CIBA
//! poll, and the show-a-license code.

use std::collections::HashMap;

use super::tokens::TokenResponse;
use super::{Client, OAuthError, OAuthErrorCode};
use crate::app::Services;
use crate::audit::{ActorKind, AuditEvent, Guard, Guarded, Outcome};
use crate::consent::{self, GrantedAccess, Terms};
use crate::error::Error;
use crate::keys::{b64url, constant_time_eq, random_token, sha256};
use crate::policy::Flow;
use crate::store::consent::{ConsentRow, RefreshRow};
use crate::store::{now, timestamp, unix_millis, Store};

/// The CIBA grant type.
pub const CIBA_GRANT: &str = "urn:openid:params:grant-type:ciba";
/// The show-a-license grant type.
pub const SHOW_GRANT: &str = "urn:licensegate:params:oauth:grant-type:show-code";

fn grant_error(msg: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidGrant, msg)
}

/// One token request for a holder-related grant, by an authenticated, active client.
pub struct TokenGrant<'a> {
    /// Services.
    pub services: &'a Services,
    /// The authenticated client.
    pub client: &'a Client,
    /// The DPoP proof header, if any.
    pub dpop: Option<&'a str>,
    /// The form parameters.
    pub params: &'a HashMap<String, String>,
}

impl TokenGrant<'_> {
    fn param(&self, name: &str) -> Result<&str, OAuthError> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                OAuthError::new(
                    OAuthErrorCode::InvalidRequest,
                    format!("{name} is required"),
                )
            })
    }

    /// The DPoP key of this request, checked; required for clients registered
    /// as needing sender-constrained tokens.
    async fn dpop_key(&self) -> Result<Option<String>, OAuthError> {
        let required = self.dpop.is_none()
            && self
                .services
                .store
                .entity(&self.client.client_id)
                .await?
                .is_some_and(|e| e.dpop_bound);
        self.dpop_key_with(required).await
    }

    /// As [`Self::dpop_key`], when whether DPoP is required is already known.
    async fn dpop_key_with(&self, required: bool) -> Result<Option<String>, OAuthError> {
        match self.dpop {
            Some(proof) => {
                let url = format!(
                    "{}/token",
                    self.services.config.public_url.trim_end_matches('/')
                );
                super::dpop::verify(&self.services.store, proof, "POST", &url, None)
                    .await
                    .map(Some)
            }
            None => {
                if required {
                    Err(OAuthError::new(
                        OAuthErrorCode::InvalidDpopProof,
                        "this client is registered for DPoP-bound tokens: send a DPoP proof",
                    ))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// The consent, if it can still back tokens.
    async fn live_consent(&self, id: &str) -> Result<ConsentRow, OAuthError> {
        let c = self
            .services
            .store
            .consent(id)
            .await?
            .ok_or_else(|| grant_error("the consent does not exist"))?;
        self.usable(c)
    }

    /// The consent if it can still back tokens of this client.
    fn usable(&self, c: ConsentRow) -> Result<ConsentRow, OAuthError> {
        let status = consent::effective_consent_status(&c, now().unix_timestamp());
        if status != "active" {
            return Err(grant_error(format!("the consent is {status}")));
        }
        if c.client_id != self.client.client_id {
            return Err(grant_error("the consent was given to another client"));
        }
        Ok(c)
    }

    /// Issues an access token (and a refresh token when `refresh`) under a
    /// consent. The refresh token row, the `guard` change (a code spent, a
    /// request redeemed) and the records are committed together, and the
    /// answer leaves only once they are durable. `Ok(None)`: the guard found
    /// its change already made (a replay), and its refusal was recorded instead.
    async fn issue(
        &self,
        c: &ConsentRow,
        jkt: Option<String>,
        refresh: bool,
        how: &str,
        mut records: Vec<AuditEvent>,
        guard: Option<Guarded>,
    ) -> Result<Option<TokenResponse>, OAuthError> {
        let bound = jkt.is_some();
        let (access_token, claims) = self
            .services
            .tokens
            .issue_for_consent(self.client, c, jkt.clone())
            .await?;
        let mut guard = guard.unwrap_or_else(|| Guarded::new(Guard::Always));
        let refresh_token = if refresh {
            let rt = random_token(32)?;
            guard.then.push(Store::insert_refresh_statement(
                &sha256(&rt),
                &RefreshRow {
                    consent_id: c.id.clone(),
                    client_id: self.client.client_id.clone(),
                    dpop_jkt: jkt,
                    expires_at: c.expires_at,
                    revoked_at: None,
                },
                &timestamp(now()),
            ));
            Some(rt)
        } else {
            None
        };
        let mut e = AuditEvent::new(
            ActorKind::Entity,
            &self.client.client_id,
            if how == "refresh_token" {
                "token.refreshed"
            } else {
                "token.issued"
            },
            Outcome::Success,
        )
        .holder(&c.holder_id)
        .purpose(&c.purpose)
        .reason(format!(
            "{how} jti={} dpop={} refresh={}",
            claims.jti,
            if bound { "yes" } else { "no" },
            if refresh_token.is_some() { "yes" } else { "no" }
        ));
        e.consent = Some(c.id.clone());
        records.push(e);
        if !self
            .services
            .audit
            .record_guarded(records, guard)
            .await?
            .applied()
        {
            return Ok(None);
        }
        Ok(Some(TokenResponse {
            access_token,
            token_type: if bound { "DPoP" } else { "Bearer" },
            expires_in: claims.exp - claims.iat,
            scope: None,
            refresh_token,
            authorization_details: claims.authorization_details,
            grant_id: Some(c.id.clone()),
        }))
    }

    /// A replayed code: whoever holds it, the grant made with it is no
    /// longer trusted, so the consent (and every token from it) is revoked.
    async fn code_replayed(&self, consent_id: &str) -> Result<TokenResponse, OAuthError> {
        consent::revoke(
            self.services,
            consent_id,
            ActorKind::System,
            "token",
            "authorization code replayed",
        )
        .await?;
        Err(grant_error(
            "the code was already used; the tokens issued from it are revoked",
        ))
    }

    /// The record of a replayed code (the consent is revoked with it).
    fn replay_refusal(&self, consent_id: &str) -> AuditEvent {
        self.refusal(&format!(
            "authorization code replayed; consent {consent_id} revoked"
        ))
    }

    fn refusal(&self, why: &str) -> AuditEvent {
        AuditEvent::new(
            ActorKind::Entity,
            &self.client.client_id,
            "access.denied",
            Outcome::Refused,
        )
        .reason(why.to_owned())
    }

    async fn refuse_audited(&self, c: Option<&ConsentRow>, why: &str) -> Result<(), OAuthError> {
        let mut e = self.refusal(why);
        if let Some(c) = c {
            e = e.holder(&c.holder_id).purpose(&c.purpose);
            e.consent = Some(c.id.clone());
        }
        self.services.audit.record(e).await?;
        Ok(())
    }

    /// `authorization_code`: single use; a replayed code is refused and the
    /// consent made with it is revoked, which ends every token issued from it.
    pub async fn authorization_code(&self) -> Result<TokenResponse, OAuthError> {
        let code = self.param("code")?;
        let digest = sha256(code);
        let (row, consent, dpop_required) = self
            .services
            .store
            .code_grant(&digest)
            .await?
            .ok_or_else(|| grant_error("the code is not valid"))?;
        let now_t = now();
        if row.used_at.is_some() {
            self.services
                .audit
                .record(self.replay_refusal(&row.consent_id))
                .await?;
            return self.code_replayed(&row.consent_id).await;
        }
        // Checked before the code is spent, so that a wrong attempt by
        // someone else does not burn the legitimate client's code.
        if row.client_id != self.client.client_id {
            self.refuse_audited(None, "authorization code presented by another client")
                .await?;
            return Err(grant_error("the code was issued to another client"));
        }
        if row.expires_at <= now_t.unix_timestamp() {
            return Err(grant_error("the code has expired"));
        }
        if self.params.get("redirect_uri").map(String::as_str) != Some(row.redirect_uri.as_str()) {
            return Err(grant_error(
                "redirect_uri does not match the authorization request",
            ));
        }
        let verifier = self
            .param("code_verifier")
            .map_err(|_| grant_error("code_verifier is required (PKCE)"))?;
        if !(43..=128).contains(&verifier.len())
            || !constant_time_eq(
                b64url(sha256(verifier)).as_bytes(),
                row.code_challenge.as_bytes(),
            )
        {
            return Err(grant_error(
                "code_verifier does not match the code_challenge",
            ));
        }
        // Before the code is spent: a bad proof must not burn it.
        let jkt = self.dpop_key_with(dpop_required).await?;
        let c = self.usable(consent)?;
        let mut redeemed = AuditEvent::new(
            ActorKind::Entity,
            &self.client.client_id,
            "code.redeemed",
            Outcome::Success,
        )
        .holder(&c.holder_id)
        .purpose(&c.purpose);
        redeemed.consent = Some(c.id.clone());
        let guard = Guarded {
            refused: vec![self.replay_refusal(&row.consent_id)],
            ..Guarded::new(Guard::Changes(Store::use_code_statement(
                &digest,
                &timestamp(now_t),
            )))
        };
        match self
            .issue(
                &c,
                jkt,
                true,
                "authorization_code",
                vec![redeemed],
                Some(guard),
            )
            .await?
        {
            Some(t) => Ok(t),
            None => self.code_replayed(&row.consent_id).await,
        }
    }

    /// `refresh_token`: the client it was issued to (with the same DPoP key),
    /// while the consent lasts.
    pub async fn refresh(&self) -> Result<TokenResponse, OAuthError> {
        let rt = self.param("refresh_token")?;
        let (row, consent, dpop_required) =
            self.services
                .store
                .refresh_grant(&sha256(rt))
                .await?
                .ok_or_else(|| grant_error("the refresh token is not valid"))?;
        if row.client_id != self.client.client_id {
            self.refuse_audited(None, "refresh token presented by another client")
                .await?;
            return Err(grant_error(
                "the refresh token was issued to another client",
            ));
        }
        if row.revoked_at.is_some() || row.expires_at <= now().unix_timestamp() {
            return Err(grant_error("the refresh token is revoked or expired"));
        }
        let c = self.usable(consent)?;
        let jkt = self.dpop_key_with(dpop_required).await?;
        if row.dpop_jkt.is_some() && jkt != row.dpop_jkt {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidDpopProof,
                "the refresh token is bound to another DPoP key",
            ));
        }
        self.issue(&c, jkt, false, "refresh_token", vec![], None)
            .await?
            .ok_or_else(|| Error::internal("an unguarded issue was refused").into())
    }

    /// CIBA poll mode: `authorization_pending`, `slow_down`, `expired_token`,
    /// `access_denied`, or the tokens (once).
    pub async fn ciba(&self) -> Result<TokenResponse, OAuthError> {
        let id = self.param("auth_req_id")?;
        let digest = sha256(id);
        let row = self
            .services
            .store
            .auth_request(&digest)
            .await?
            .filter(|r| r.kind == "ciba")
            .ok_or_else(|| grant_error("auth_req_id is not valid"))?;
        if row.client_id != self.client.client_id {
            return Err(grant_error("auth_req_id was issued to another client"));
        }
        let t = now();
        let now_unix = t.unix_timestamp();
        let err = |code, msg: &str| Err(OAuthError::new(code, msg));
        match row.status.as_str() {
            "denied" => return err(OAuthErrorCode::AccessDenied, "the holder refused"),
            "redeemed" => return err(OAuthErrorCode::InvalidGrant, "auth_req_id was already used"),
            _ if row.expires_at <= now_unix => {
                return err(OAuthErrorCode::ExpiredToken, "the request expired")
            }
            _ => {}
        }
        // A poll before its time slows the client down by five more seconds.
        let now_ms = unix_millis(t);
        let too_early = now_ms < row.next_poll_at;
        let interval = row.poll_interval + if too_early { 5 } else { 0 };
        self.services
            .store
            .set_next_poll(&digest, now_ms + interval * 1000, interval)
            .await?;
        if too_early {
            return err(
                OAuthErrorCode::SlowDown,
                &format!("poll at most every {interval} seconds"),
            );
        }
        if row.status == "pending" {
            return err(
                OAuthErrorCode::AuthorizationPending,
                "the holder has not decided yet",
            );
        }
        let consent_id = row
            .consent_id
            .clone()
            .ok_or_else(|| Error::internal("an approved request without consent"))?;
        let jkt = self.dpop_key().await?;
        let c = self.live_consent(&consent_id).await?;
        let guard = Guarded {
            refused: vec![self.refusal("auth_req_id redeemed twice")],
            ..Guarded::new(Guard::Changes(Store::redeem_request_statement(
                &digest, now_unix,
            )))
        };
        self.issue(&c, jkt, true, "ciba", vec![], Some(guard))
            .await?
            .ok_or_else(|| grant_error("auth_req_id was already used"))
    }

    /// The show-a-license code: a token bound to that license and those
    /// fields, for one retrieval, if the entity's use list and the policies
    /// allow the stated purpose.
    pub async fn show_code(&self) -> Result<TokenResponse, OAuthError> {
        let code = self.param("code")?;
        let purpose = self.param("purpose")?.to_owned();
        let now_t = now();
        let jkt = self.dpop_key().await?;
        let shown = self
            .services
            .store
            .use_show_code(&sha256(code), now_t.unix_timestamp(), &timestamp(now_t))
            .await?
            .ok_or_else(|| grant_error("the code is not valid, expired or already used"))?;
        let fields: Vec<String> = serde_json::from_str(&shown.fields).map_err(Error::internal)?;
        let license = self
            .services
            .store
            .license(&shown.license_id)
            .await?
            .ok_or_else(|| Error::internal("a shown license vanished"))?;
        let identifier = self
            .services
            .library
            .holder_licenses(&shown.holder_id)
            .await?
            .into_iter()
            .find(|(l, _)| l.id == license.id)
            .map(|(_, i)| i)
            .ok_or_else(|| Error::internal("a shown license changed holder"))?;
        let terms = Terms {
            purpose: purpose.clone(),
            duration_days: None,
            max_retrievals: 1,
            elements: vec![consent::LicenseAccess {
                kind: consent::DETAILS_TYPE.into(),
                purpose: purpose.clone(),
                license_type: license.license_type.clone(),
                identifier: Some(identifier.clone()),
                fields: fields.clone(),
                optional_fields: vec![],
                duration_days: None,
                max_retrievals: None,
            }],
        };
        consent::check_request(
            self.services,
            &self.client.client_id,
            &terms,
            Flow::ShowLicense,
        )
        .await?;
        let granted = vec![GrantedAccess {
            kind: consent::DETAILS_TYPE.into(),
            purpose,
            license_type: license.license_type.clone(),
            licenses: vec![identifier],
            fields,
        }];
        let mut c = consent::new_consent(
            &shown.holder_id,
            &self.client.client_id,
            &terms,
            &granted,
            Flow::ShowLicense,
        )?;
        // Good for as long as the code was, and one retrieval.
        c.expires_at = c
            .expires_at
            .min(now_t.unix_timestamp() + super::flows::SHOW_CODE_LIFETIME);
        self.services.store.insert_consent(&c).await?;
        let granted_event = consent::consent_event(&c, "consent.granted", &granted);
        let receipt =
            crate::notify::consent_notification(self.services, &c, "consent.granted").await?;
        let guard = Guarded::notify(vec![receipt]);
        self.issue(
            &c,
            jkt,
            false,
            "show_code",
            vec![granted_event],
            Some(guard),
        )
        .await?
        .ok_or_else(|| Error::internal("an unguarded issue was refused").into())
    }
}
